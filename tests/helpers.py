"""Test plumbing: real embedded Postgres + Redis, fresh databases, and the Procfile's processes."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

from eventlog.settings import ROOT, psycopg_url
from eventlog.supervisor import migrate

PROCFILE = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database(server_url: str, name: str) -> str:
    """A new, migrated database on the test server; returns its URL."""
    with psycopg.connect(psycopg_url(server_url), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(server_url, name)
    migrate(url)
    return url


def with_dbname(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class Stack:
    """The service's processes, started from the Procfile's own command lines."""

    env: dict[str, str]
    data_dir: Path
    port: int
    admin_key: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, name: str, instance: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start the Procfile's `name` (as `instance`), with `env` over the stack's environment."""
        key = instance or name
        log = open(self.data_dir / f"{key}.log", "ab")
        p = subprocess.Popen(shlex.split(PROCFILE[name]), env={**self.env, **(env or {})}, cwd=str(ROOT), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[key] = p
        return p

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(key)
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def cpu_workers(self) -> list[str]:
        return sorted(k for k in self.procs if k.startswith("worker-cpu"))

    def stop_cpu_workers(self) -> list[str]:
        keys = self.cpu_workers()
        for k in keys:
            self.kill(k, signal.SIGTERM)
        return keys

    def start_cpu_workers(self, keys: list[str]) -> None:
        for k in keys:
            self.start("worker-cpu", k)

    def worker_of_job(self, job_id: str) -> str:
        """The cpu worker instance holding the job's lease (claimed in the worker process itself)."""
        row = self.sql("SELECT worker FROM leases WHERE job_id = %s", (job_id,))
        pid = int(row[0]["worker"].split(":")[1])
        for k, p in self.procs.items():
            if p.pid == pid:
                return k
        raise AssertionError(f"no managed process has pid {pid}")

    def kill_tree(self, key: str) -> list[int]:
        """SIGKILL a process and every descendant (RQ's work horse runs in a session of its own), as
        when the machine or container under a worker dies."""
        import psutil

        p = self.procs.pop(key)
        root = psutil.Process(p.pid)
        victims = [root, *root.children(recursive=True)]
        for v in victims:
            try:
                v.kill()
            except psutil.NoSuchProcess:
                pass
        p.wait(15)
        psutil.wait_procs(victims, timeout=15)
        return [v.pid for v in victims]

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.kill(key, signal.SIGTERM)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"API did not become healthy; see {self.data_dir}/web.log")

    # ---- HTTP helpers ----
    def http(self, method: str, path: str, key: str | None = None, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.request(method, self.base_url + path, headers=headers, timeout=60, **kw)

    def new_key(self, role: str = "trainer", project: str | None = None) -> dict[str, Any]:
        project = project or f"p-{os.urandom(4).hex()}"
        r = self.http("POST", "/api/keys", self.admin_key, json={"role": role, "project": project})
        assert r.status_code == 201, r.text
        return r.json()

    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with psycopg.connect(psycopg_url(self.env["DATABASE_URL"]), autocommit=True, row_factory=dict_row) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    def wait_job(self, key: str, job_id: str, statuses: set[str], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.http("GET", f"/v1/fine_tuning/jobs/{job_id}", key).json()
            if job.get("status") in statuses:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s (wanted {statuses})")


def python() -> str:
    return sys.executable


def launch_stack(db: str, redis_url: str, data_dir: Path, model_dir: Path, **env: str) -> Stack:
    """The service's processes on database `db`: API, serving, projector, dispatcher and two cpu workers, started
    from the Procfile's own command lines with an operator key; returns once the API is healthy.
    `env` overrides the test defaults (TUNELOG_* variables)."""
    from eventlog.keys import register_key

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full = {
        **os.environ,
        "DATABASE_URL": db, "REDIS_URL": redis_url, "TUNELOG_DATA_DIR": str(data_dir),
        "TUNELOG_MODEL_DIR": str(model_dir), "TUNELOG_PORT": str(port), "TUNELOG_TRAINING_QUEUE": "cpu",
        "TUNELOG_SERVING_PORT": str(free_port()),
        # set, as for replicas on other hosts: an API on another data directory (test_limits) can use this replica
        "TUNELOG_SERVING_TOKEN": "tl-serving-" + os.urandom(16).hex(),
        "TUNELOG_LEASE_SECONDS": "4", "TUNELOG_MAX_ATTEMPTS": "3", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **env,
    }
    s = Stack(env=full, data_dir=data_dir, port=port)
    s.admin_key = "tl-test-operator-" + os.urandom(8).hex()
    register_key(db, s.admin_key, role="operator", project="default", name="test operator")
    for name, instance in (("web", None), ("serving", None), ("projector", None), ("dispatcher", None),
                           ("worker-cpu", "worker-cpu.1"), ("worker-cpu", "worker-cpu.2")):
        s.start(name, instance)
    s.wait_healthy()
    return s


def wait_for(predicate, timeout: float, interval: float = 0.3, what: str = "condition"):
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (requests.RequestException, ValueError):
            pass
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout}s (last: {last!r})")


def pdf_bytes(objs: list[bytes]) -> bytes:
    """A PDF file of these numbered objects (1 is the catalog), with its cross-reference table: test PDFs
    are built by hand (no PDF writer is a dependency)."""
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return out


def program_state(demos: list[dict] | None = None, instructions: str = "Answer the student's question.") -> dict:
    """A tutor program's DSPy JSON state, as `program.save(path, save_program=False)` writes it."""
    fields = [{"prefix": "Context:", "description": "passages"}, {"prefix": "Question:", "description": "the question"},
              {"prefix": "Answer:", "description": "the answer"}]
    return {"respond": {"traces": [], "train": [], "demos": demos or [], "lm": None,
                        "signature": {"instructions": instructions, "fields": fields}},
            "metadata": {"dependency_versions": {"python": "3.11", "dspy": "3.4.1"}}}


def register_model(stack, project: str, job_id: str | None = None, model_id: str | None = None,
                   base: str = "smollm2-135m-instruct", artifact_path: str | None = None) -> str:
    """A registered fine-tuned model, as a succeeded job leaves it (the ModelRegistered event, no weights)."""
    import os
    import time

    from eventlog.db import pool
    from eventlog.store import EventStore, NewEvent

    job_id = job_id or "ftjob-" + os.urandom(12).hex()
    model_id = model_id or f"ft:{base}:{project}:matrix:{job_id[-8:]}"
    store = EventStore(pool(stack.env["DATABASE_URL"]))
    store.append(f"model-{model_id}", 0, [NewEvent("ModelRegistered", {
        "id": model_id, "project": project, "base_model": base, "backend": "hf-lora", "job_id": job_id,
        "artifact_path": artifact_path or f"artifacts/{job_id}/model", "created_at": int(time.time()),
        "lineage": {"base_model": base, "job_id": job_id, "final_metrics": {}}}, {"actor": "test"})])
    wait_for(lambda: stack.sql("SELECT 1 FROM models WHERE id = %s", (model_id,)), 30, what="the model projected")
    return model_id


def random_adapters(data_dir: Path) -> dict[str, str]:
    """Two real peft LoRA adapters of the bundled base with random weights (so they answer differently from the
    base and from each other), in the artifact store: name -> path relative to the data directory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir = Path(os.environ.get("TUNELOG_MODEL_DIR") or ROOT / ".data" / "models")
    out = {}
    for i, name in enumerate(("adapter-one", "adapter-two")):
        rel = f"artifacts/serving-test/{name}"
        if not (data_dir / rel / "adapter_config.json").exists():
            torch.manual_seed(100 + i)
            base = AutoModelForCausalLM.from_pretrained(model_dir / "smollm2-135m-instruct")
            cfg = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            get_peft_model(base, cfg).save_pretrained(data_dir / rel)
        out[name] = rel
    return out
