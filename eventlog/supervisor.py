"""What `scripts/serve` runs: embedded Postgres/Redis (unless DATABASE_URL/REDIS_URL are given),
migrations, the bundled model, the admin key, then every Procfile process under honcho.
Ctrl-C or SIGTERM stops all of it, embedded servers included, within 15 s."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis
from eventlog.settings import ROOT


def migrate(database_url: str) -> None:
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
                   check=True, env={**os.environ, "DATABASE_URL": database_url}, cwd=str(ROOT))


@dataclass
class Infra:
    """The servers this instance needs: embedded ones under data_dir, or the URLs it was given."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    pg: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    def start(self) -> dict[str, str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.env.get("DATABASE_URL"):
            self.pg = EmbeddedPostgres(self.data_dir / "pg")
            self.env["DATABASE_URL"] = self.pg.start()
        if not self.env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            self.env["REDIS_URL"] = self.redis.start()
        self.env["TUNELOG_DATA_DIR"] = str(self.data_dir)
        return self.env

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        if self.pg:
            self.pg.stop()


def ensure_admin_key(env: dict[str, str], data_dir: Path) -> tuple[str, bool]:
    """The admin key: TUNELOG_API_KEY, else the one generated on a first start (kept in data_dir)."""
    key = env.get("TUNELOG_API_KEY")
    generated = False
    keyfile = data_dir / "admin_key"
    if not key:
        if keyfile.exists():
            key = keyfile.read_text().strip()
        else:
            key = "tl-" + secrets.token_urlsafe(32)
            keyfile.write_text(key + "\n")
            keyfile.chmod(0o600)
            generated = True
    register_key(env["DATABASE_URL"], key, role="admin", project=env.get("TUNELOG_PROJECT", "default"),
                 name="bootstrap admin")
    return key, generated


def register_key(database_url: str, key: str, role: str, project: str, name: str) -> str:
    """Append KeyCreated for this key unless its hash is known (idempotent by command id)."""
    from api.auth import hash_key, key_id_for
    from domain.events import KeyCreated, key_stream
    from eventlog.db import pool
    from eventlog.runner import catch_up
    from eventlog.store import Command, EventStore, NewEvent

    h = hash_key(key)
    p = pool(database_url, max_size=2)
    store = EventStore(p)
    kid = key_id_for(h)
    if store.stream_version(key_stream(kid)) == 0:
        ev = KeyCreated(id=kid, key_hash=h, name=name, role=role, project=project, created_at=int(time.time()))
        store.append(key_stream(kid), 0, [NewEvent(ev.type, ev.to_data(), {"actor": "cli"})],
                     command=Command(f"bootstrap:{kid}", h, {"status": 201, "body": {"id": kid}}))
    catch_up(p)
    return kid


def main() -> int:
    from eventlog.catalog import BASE_MODELS, ensure_base_model

    data_dir = Path(os.environ.get("TUNELOG_DATA_DIR") or ROOT / ".data").resolve()
    port = os.environ.get("TUNELOG_PORT", "8000")
    infra = Infra(data_dir)
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Both explicitly: a shell starting us in the background leaves SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    honcho = None
    try:
        env = infra.start()
        env.setdefault("TUNELOG_PORT", port)
        print(f"tunelog: data in {data_dir}", flush=True)
        migrate(env["DATABASE_URL"])
        model_dir = Path(env.get("TUNELOG_MODEL_DIR") or data_dir / "models")
        for name in BASE_MODELS:
            ensure_base_model(model_dir, name)
        os.environ.update(env)
        key, generated = ensure_admin_key(env, data_dir)
        print(f"tunelog: serving on http://127.0.0.1:{port}  (OpenAI base_url http://127.0.0.1:{port}/v1)",
              flush=True)
        if generated:
            print(f"tunelog: generated admin API key (saved in {data_dir / 'admin_key'}): {key}", flush=True)
        else:
            source = "TUNELOG_API_KEY" if env.get("TUNELOG_API_KEY") else data_dir / "admin_key"
            print(f"tunelog: admin API key from {source}", flush=True)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TUNELOG_PRELOAD_MODELS", "1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Two cpu workers: indexing a document or a DSPy run must not wait behind a CPU training run.
        cpu_workers = env.setdefault("TUNELOG_CPU_WORKERS", "2")
        honcho = subprocess.Popen([sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT),
                                   "--no-colour", "start", "-c", f"worker-cpu={cpu_workers}"],
                                  env=env, start_new_session=True)
        while honcho.poll() is None:
            time.sleep(0.5)
        return honcho.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if honcho is not None and honcho.poll() is None:
            print("tunelog: stopping...", flush=True)
            try:
                os.killpg(honcho.pid, signal.SIGTERM)
                honcho.wait(8)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(honcho.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                honcho.wait()
        infra.stop()
        print("tunelog: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
