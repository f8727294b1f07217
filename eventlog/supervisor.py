"""What `scripts/serve` runs: embedded Postgres/Redis (unless DATABASE_URL/REDIS_URL are given),
migrations, the bundled model, the admin key, then every Procfile process under a small supervisor of
our own: a process that dies (an OOM-killed worker, a crashed projector) is restarted after an
exponential backoff (1 s, 2 s, 4 s ... at most 30 s; back to 1 s once it had run 60 s), and never takes
the others down. Its output reaches the terminal, each line prefixed by the process's name.
Ctrl-C or SIGTERM stops all of it (process groups, so RQ work horses and trainings too, and the
embedded servers) within 15 s."""
from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import psutil
from honcho.environ import ProcessParams, expand_processes, parse_procfile

from eventlog.embedded import EmbeddedPostgres, EmbeddedRedis, read_secret, write_secret
from eventlog.keys import register_key
from eventlog.settings import ROOT

STOP_GRACE = 8.0  # seconds between SIGTERM and SIGKILL at shutdown (the embedded servers stop after)


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


def ensure_admin_key(env: dict[str, str], data_dir: Path) -> tuple[Path | None, bool]:
    """The admin key: TUNELOG_API_KEY, else the one generated on a first start, kept in
    data_dir/admin_key (created 0600: never readable by others, not even for a moment). Returns where
    it is kept (None for TUNELOG_API_KEY) and whether it was generated now."""
    key = env.get("TUNELOG_API_KEY")
    keyfile: Path | None = None
    generated = False
    if not key:
        keyfile = data_dir / "admin_key"
        if not keyfile.exists():
            generated = write_secret(keyfile, "tl-" + secrets.token_urlsafe(32) + "\n")
        key = read_secret(keyfile)
    # the instance operator's key: the one key that crosses projects (DESIGN §3)
    register_key(env["DATABASE_URL"], key, role="operator", project=env.get("TUNELOG_PROJECT", "default"),
                 name="instance operator")
    return keyfile, generated


@dataclass
class Backoff:
    """How long to wait before restarting a process that died: doubling from `first` up to `cap`, and
    back to `first` once the process had run `stable_after` seconds (it was healthy; this is news)."""

    first: float = 1.0
    cap: float = 30.0
    stable_after: float = 60.0
    current: float = 0.0

    def after_exit(self, ran_for: float) -> float:
        if ran_for >= self.stable_after or not self.current:
            self.current = self.first
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay


@dataclass
class Child:
    """One Procfile process (one of its copies): the command, and its current incarnation."""

    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float | None = 0.0  # when to (re)start it; None while it runs
    backoff: Backoff = field(default_factory=Backoff)
    restarts: int = 0


class Supervisor:
    """Runs processes, each in its own process group, restarts any that dies, and stops them all.

    It makes itself the "child subreaper" (Linux), so what a dead process leaves behind (an RQ work
    horse, which runs in a process group of its own, and the training it runs) comes to it instead of
    to init: such leftovers are killed, so a restarted worker starts clean and the job's lease expires
    as the dispatcher expects, and nothing escapes the stop."""

    def __init__(self, processes: list[ProcessParams], cwd: Path, out: BinaryIO | None = None):
        self.children = [Child(p.name, shlex.split(p.cmd), p.env) for p in processes]
        self.cwd = cwd
        self.out = out or sys.stdout.buffer
        self.width = max((len(c.name) for c in self.children), default=0)
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self._me = psutil.Process()
        # What this process ran before (the embedded Redis) is not the supervisor's to manage.
        self.keep = {p.pid for p in self._me.children()}
        _become_subreaper()

    def say(self, name: str, line: bytes) -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | ".encode()
        with self._lock:
            try:
                self.out.write(prefix + line.rstrip(b"\n") + b"\n")
                self.out.flush()
            except (OSError, ValueError):  # our own output is gone: the processes keep running
                pass

    def _pump(self, name: str, pipe: BinaryIO) -> None:
        with pipe:
            for line in iter(pipe.readline, b""):
                self.say(name, line)

    def _spawn(self, c: Child) -> None:
        c.started, c.restart_at = time.monotonic(), None
        try:
            c.proc = subprocess.Popen(c.argv, env=c.env, cwd=str(self.cwd), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            c.proc = None
            self._died(c, f"could not start ({e})")
            return
        self.say("tunelog", f"{c.name} started (pid {c.proc.pid})".encode())
        t = threading.Thread(target=self._pump, args=(c.name, c.proc.stdout), daemon=True, name=f"out-{c.name}")
        t.start()
        self._pumps = [p for p in self._pumps if p.is_alive()] + [t]

    def _died(self, c: Child, how: str) -> None:
        ran_for = time.monotonic() - c.started
        delay = c.backoff.after_exit(ran_for)
        c.restart_at = time.monotonic() + delay
        c.restarts += 1
        self.say("tunelog", f"{c.name} {how} after {ran_for:.0f} s; restarting it in {delay:.0f} s".encode())

    def _managed(self) -> set[int]:
        return {c.proc.pid for c in self.children if c.proc is not None} | self.keep

    def _tree(self) -> list[psutil.Process]:
        """Every process the supervisor answers for: its processes, what they started, and what dead
        ones left behind."""
        out: list[psutil.Process] = []
        for k in self._me.children():
            if k.pid in self.keep:
                continue
            try:
                out += [k, *k.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def _clear_leftovers(self) -> None:
        """Kill (and reap) the orphans that came to us: only a dead process leaves any behind."""
        managed = self._managed()
        for k in self._me.children():
            if k.pid in managed:
                continue
            try:
                if k.status() != psutil.STATUS_ZOMBIE:
                    self.say("tunelog", f"killing pid {k.pid} ({k.name()}), left behind by a process that died"
                             .encode())
                    for q in [*k.children(recursive=True), k]:
                        q.kill()
                os.waitpid(k.pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                pass

    def poll(self) -> None:
        """Notice deaths (and kill what the dead left behind); start what is due."""
        now = time.monotonic()
        for c in self.children:
            if c.proc is not None and c.restart_at is None:
                rc = c.proc.poll()
                if rc is not None:
                    _signal_group(c.proc.pid, signal.SIGKILL)  # the rest of its process group
                    self._died(c, _how(rc))
        self._clear_leftovers()
        for c in self.children:
            if c.restart_at is not None and c.restart_at <= now:
                self._spawn(c)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every process group in the tree, SIGKILL whatever is left after `grace` seconds."""
        tree = self._tree()
        groups = set()
        for p in tree:
            try:
                groups.add(os.getpgid(p.pid))
            except ProcessLookupError:
                pass
        groups -= {os.getpgrp()}
        for g in groups:
            _signal_group(g, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for g in groups:
            _signal_group(g, signal.SIGKILL)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=3)
        for c in self.children:
            if c.proc is not None:
                c.proc.poll()
        for t in self._pumps:
            t.join(1)


def _become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to us, not to init."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _how(rc: int) -> str:
    if rc >= 0:
        return f"exited with {rc}"
    try:
        return f"was killed by {signal.Signals(-rc).name}"
    except ValueError:
        return f"was killed by signal {-rc}"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def procfile_processes(env: dict[str, str], cpu_workers: int) -> list[ProcessParams]:
    procfile = parse_procfile((ROOT / "Procfile").read_text())
    return expand_processes(procfile.processes, concurrency={"worker-cpu": cpu_workers}, env=env)


def main() -> int:
    from eventlog.catalog import BASE_MODELS, ensure_base_model

    data_dir = Path(os.environ.get("TUNELOG_DATA_DIR") or ROOT / ".data").resolve()
    port = os.environ.get("TUNELOG_PORT", "8000")
    infra = Infra(data_dir)
    stop = threading.Event()
    supervising = False

    def _stop(*_):
        stop.set()
        if not supervising:  # still starting up: abandon whatever step it is in
            raise KeyboardInterrupt

    # Both explicitly: a shell starting us in the background leaves SIGINT ignored, and Python keeps it so.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sup = None
    try:
        env = infra.start()
        env.setdefault("TUNELOG_PORT", port)
        print(f"tunelog: data in {data_dir}", flush=True)
        migrate(env["DATABASE_URL"])
        model_dir = Path(env.get("TUNELOG_MODEL_DIR") or data_dir / "models")
        for name in BASE_MODELS:
            ensure_base_model(model_dir, name)
        os.environ.update(env)
        keyfile, generated = ensure_admin_key(env, data_dir)
        print(f"tunelog: serving on http://127.0.0.1:{port}  (OpenAI base_url http://127.0.0.1:{port}/v1)",
              flush=True)
        if keyfile is None:
            print("tunelog: admin API key from TUNELOG_API_KEY", flush=True)
        else:  # never the key itself: terminals and logs are read by others
            print(f"tunelog: admin API key {'generated, ' if generated else ''}kept in {keyfile} "
                  f"(owner-only; read it with: cat {keyfile})", flush=True)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("TUNELOG_PRELOAD_MODELS", "1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Two cpu workers: indexing a document or a DSPy run must not wait behind a CPU training run.
        cpu_workers = int(env.setdefault("TUNELOG_CPU_WORKERS", "2"))
        sup = Supervisor(procfile_processes(env, cpu_workers), cwd=ROOT)
        supervising = True
        while not stop.is_set():
            sup.poll()
            stop.wait(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if sup is not None:
            print("tunelog: stopping...", flush=True)
            sup.stop()
        infra.stop()
        print("tunelog: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
