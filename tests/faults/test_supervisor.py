"""scripts/serve survives the death of any of its processes (each is restarted, the API keeps
answering), still stops every descendant on SIGTERM, and keeps its secrets: the admin key is never
printed and is 0600 from birth, the embedded Postgres asks for a password on a socket only its owner
reaches (data dirs made by the old trust-everyone code are migrated), Redis has no TCP port."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
import requests

from eventlog.embedded import EmbeddedPostgres, pg_bin, write_secret
from eventlog.settings import ROOT
from eventlog.supervisor import Backoff
from tests.conftest import MODEL_DIR
from tests.helpers import free_port


@pytest.fixture
def data_root():
    """A folder for an embedded Postgres: under /tmp itself, not pytest's tmp_path, whose 0700
    pytest-of-<user> folder another pytest session may close again while the server (its own user when
    we are root) needs to traverse it."""
    d = Path(tempfile.mkdtemp(prefix="tunelog-faults-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_for(what: str, check, timeout: float, every: float = 0.25):
    """check() until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def refuses_without_password(sockdir: Path, dbname: str) -> bool:
    try:
        psycopg.connect(host=str(sockdir), user="postgres", dbname=dbname, password="", connect_timeout=5,
                        passfile=str(sockdir.parent / ".no-passfile")).close()
    except psycopg.OperationalError:
        return True
    return False


def hba_methods(pgdata: Path) -> list[str]:
    lines = [line.split("#", 1)[0].split() for line in (pgdata / "pg_hba.conf").read_text().splitlines()]
    return [fields[-1] for fields in lines if fields]


# ---- units -------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_a_cap_and_resets_after_a_healthy_run():
    b = Backoff(first=1, cap=30, stable_after=60)
    assert [b.after_exit(ran_for=2) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.after_exit(ran_for=61) == 1  # it had run a minute: this death is news, not a crash loop
    assert b.after_exit(ran_for=1) == 2


def test_a_secret_file_is_owner_only_from_its_first_instant_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        assert write_secret(tmp_path / "s", "one\n")
        assert not write_secret(tmp_path / "s", "two\n")  # never overwritten
    finally:
        os.umask(old)
    assert mode(tmp_path / "s") == 0o600
    assert (tmp_path / "s").read_text() == "one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary file left


# ---- the embedded Postgres ---------------------------------------------------------------------


def test_a_data_dir_made_by_the_old_trust_code_is_migrated_to_a_password(data_root):
    pg = EmbeddedPostgres(data_root / "pg", dbname="tunelog")
    # What the old code did: a 0755 socket dir, initdb --auth=trust, no password file.
    pg.sockdir.mkdir(parents=True)
    pg._prepare_permissions()
    pg._run([str(pg_bin("initdb")), "-D", str(pg.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-instructions"])
    assert "trust" in hba_methods(pg.pgdata)
    try:
        url = pg.start()
        with psycopg.connect(url) as c:
            assert c.execute("SELECT current_database()").fetchone()[0] == "tunelog"
        assert refuses_without_password(pg.sockdir, "tunelog")
        assert "trust" not in hba_methods(pg.pgdata)
        assert mode(pg.password_file) == 0o600 and mode(pg.sockdir) == 0o700
        pg.stop()
        assert pg.start() == url  # and the migrated dir starts again, same password
    finally:
        pg.stop()


# ---- the supervisor on its own (fast) ----------------------------------------------------------

# Run in a process of its own: the supervisor makes its process a child subreaper, not pytest.
DRIVER = textwrap.dedent('''
    import json, os, signal, sys, time
    from pathlib import Path
    import psutil
    from honcho.environ import ProcessParams
    from eventlog.supervisor import Supervisor

    tmp = Path(sys.argv[1])
    # A parent that forks a "work horse" into a process group of its own (as RQ does), which forks a
    # "training" in turn; both record their pid, then everything sleeps.
    prog = ("import os, sys, time\\n"
            "tmp = sys.argv[1]\\n"
            "if os.fork() == 0:\\n"
            "    os.setpgrp()\\n"
            "    if os.fork() == 0:\\n"
            "        open(f'{tmp}/training.{os.getpid()}', 'w').close()\\n"
            "    else:\\n"
            "        open(f'{tmp}/horse.{os.getpid()}', 'w').close()\\n"
            "    time.sleep(600)\\n"
            "print('parent up', flush=True)\\n"
            "time.sleep(600)\\n")
    (tmp / "prog.py").write_text(prog)
    cmd = f"{sys.executable} {tmp / 'prog.py'} {tmp}"
    sup = Supervisor([ProcessParams("parent.1", cmd, False, dict(os.environ))], cwd=tmp)

    def pids(kind):
        return sorted(int(p.name.split(".")[1]) for p in tmp.glob(kind + ".*"))

    def until(check, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sup.poll()
            if check():
                return True
            time.sleep(0.1)
        return False

    out = {}
    assert until(lambda: len(pids("horse")) == 1 and len(pids("training")) == 1)
    first = sup.children[0].proc.pid
    doomed = pids("horse") + pids("training")
    os.kill(first, signal.SIGKILL)
    out["restarted"] = until(lambda: sup.children[0].proc.pid != first and len(pids("horse")) == 2)
    out["leftovers_killed"] = until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                                                    != psutil.STATUS_ZOMBIE for p in doomed))
    alive = [sup.children[0].proc.pid, *[p for p in pids("horse") + pids("training") if p not in doomed]]
    t0 = time.monotonic()
    sup.stop(grace=5)
    out["stop_s"] = time.monotonic() - t0
    out["left_after_stop"] = [p for p in alive if psutil.pid_exists(p)
                              and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    print("RESULT " + json.dumps(out), flush=True)
''')


def test_supervisor_restarts_a_dead_process_kills_its_leftovers_and_stops_every_descendant(tmp_path):
    r = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=str(ROOT), capture_output=True,
                       text=True, timeout=120)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["restarted"], "the killed process was started again"
    assert out["leftovers_killed"], "its work horse (own process group) and that one's child were killed"
    assert out["left_after_stop"] == [] and out["stop_s"] < 10, out
    assert "parent.1 | parent up" in r.stdout  # output reaches the terminal, prefixed by the process name
    assert "parent.1 was killed by SIGKILL" in r.stdout


# ---- scripts/serve, whole ----------------------------------------------------------------------


def children_running(serve: subprocess.Popen, needle: str) -> list[psutil.Process]:
    """The service's processes (descendants of serve) whose command line contains `needle`: not a
    shell that runs one, nor a fork of one (an RQ work horse has its worker's command line)."""
    out = []
    for p in psutil.Process(serve.pid).children(recursive=True):
        try:
            cmd = p.cmdline()
            if (needle in " ".join(cmd) and p.status() != psutil.STATUS_ZOMBIE
                    and p.name() not in ("sh", "bash", "dash") and p.parent().cmdline() != cmd):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


class HealthWatch(threading.Thread):
    """GET /healthz every quarter second until stopped; remembers every answer that was not a 200."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.url, self.done, self.bad, self.ok = f"http://127.0.0.1:{port}/healthz", threading.Event(), [], 0

    def run(self):
        while not self.done.is_set():
            try:
                r = requests.get(self.url, timeout=10)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.bad.append(r.status_code)
            except requests.RequestException as e:
                self.bad.append(type(e).__name__)
            self.done.wait(0.25)


def kill_and_see_it_replaced(serve: subprocess.Popen, needles: list[str], count: dict[str, int]) -> None:
    """SIGKILL one process of each kind; each is replaced within 15 s, and the new one stays up."""
    killed = set()
    for n in needles:
        procs = children_running(serve, n)
        assert len(procs) == count[n], (n, procs)
        procs[0].kill()
        killed.add(procs[0].pid)
    fresh = []
    for n in needles:
        def replaced(n=n):
            now = children_running(serve, n)
            return now if len(now) == count[n] and not killed & {p.pid for p in now} else None

        fresh += wait_for(f"{n} replaced", replaced, timeout=15)
    time.sleep(3)
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in fresh), "they stay up"


@pytest.mark.slow
def test_serve_outlives_its_processes_deaths_keeps_its_secrets_and_stops_everything(data_root, tmp_path):
    data = data_root / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "TUNELOG_API_KEY",
                                                            "TUNELOG_CPU_WORKERS")}
    env.update(TUNELOG_DATA_DIR=str(data), TUNELOG_PORT=str(port), TUNELOG_MODEL_DIR=str(MODEL_DIR))
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen([str(ROOT / "scripts" / "serve")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    watch = HealthWatch(port)
    everything: list[psutil.Process] = []
    try:
        def healthy():
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                assert serve.poll() is None, log_path.read_text()[-3000:]
                return False

        wait_for("scripts/serve answers /healthz", healthy, timeout=300, every=0.5)
        count = {"-m workers cpu": 2, "-m eventlog.runner": 1, "-m eventlog.dispatcher": 1}
        wait_for("every process started",
                 lambda: all(len(children_running(serve, n)) == c for n, c in count.items()), timeout=30)
        watch.start()

        # A worker dies (the OOM killer's way): it is replaced, nothing else stops.
        kill_and_see_it_replaced(serve, ["-m workers cpu"], count)
        # Then the projector and the dispatcher, together.
        kill_and_see_it_replaced(serve, ["-m eventlog.runner", "-m eventlog.dispatcher"], count)
        watch.done.set()
        watch.join(15)
        assert watch.bad == [] and watch.ok > 10, f"the API kept answering /healthz: {watch.bad}"

        # Secrets at rest.
        keyfile = data / "admin_key"
        key = keyfile.read_text().strip()
        assert mode(keyfile) == 0o600
        r = requests.post(f"http://127.0.0.1:{port}/api/keys", json={"role": "trainer"}, timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 201  # and the service still works end to end
        sockdir, pgdata = data / "pg" / "run", data / "pg" / "data"
        assert mode(sockdir) == 0o700 and mode(data / "pg" / "password") == 0o600
        if os.geteuid() == 0:  # the server runs as its own system user, which must own its socket dir
            assert sockdir.owner() == "pgserver"
        assert refuses_without_password(sockdir, "tunelog")
        password = (data / "pg" / "password").read_text().strip()
        psycopg.connect(host=str(sockdir), user="postgres", dbname="tunelog", password=password).close()
        assert "trust" not in hba_methods(pgdata)
        rsock = data / "redis" / "redis.sock"
        assert mode(rsock) == 0o700
        rc = redis.Redis(unix_socket_path=str(rsock))
        assert rc.config_get("port")["port"] == "0"  # no TCP listener
        rc.close()
    finally:
        watch.done.set()
        try:
            everything = psutil.Process(serve.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        t0 = time.monotonic()
        try:
            os.kill(serve.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        serve.wait(30)
        took = time.monotonic() - t0
    assert len(everything) >= 6  # api, projector, dispatcher, 2 cpu workers, gpu worker (, redis, ...)
    _, alive = psutil.wait_procs(everything, timeout=max(0.0, 15 - took))
    assert alive == [], f"still running after SIGTERM: {alive}"
    left = wait_for("the embedded servers stopped too", lambda: subprocess.run(
        ["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split() == [] or None,
        timeout=max(1.0, 15 - (time.monotonic() - t0)))
    assert left and took < 15, took

    out = log_path.read_text()
    assert key not in out, "the admin key never reaches the terminal"
    assert str(keyfile) in out, "where the key is kept is printed instead"
    assert "worker-cpu." in out and "was killed by SIGKILL" in out  # restarts are told, prefixed output too
