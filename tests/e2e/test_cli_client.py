"""Issue 10, the `tunelog` CLI as a user runs it (a subprocess, over HTTP, against the running service):
upload and validate files, create a job and follow it to the end, models, history, the registry as of a
point, chat; bad input gets a non-zero exit and a clear message."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA, ROOT

BASE = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli(stack):
    key = stack.new_key("admin")["key"]

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "TUNELOG_URL": stack.base_url, "TUNELOG_API_KEY": key, "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "eventlog.cli", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
    return run


def test_files_upload_validate_and_bad_input(cli, tmp_path):
    r = cli("files", "upload", str(DATA / "tiny_train.jsonl"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["id"].startswith("file-")
    r = cli("files", "validate", str(DATA / "tiny_train.jsonl"))
    assert r.returncode == 0 and "12 examples in chat format, OK" in r.stdout, r.stdout + r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    for args in (("files", "validate", str(bad)), ("files", "upload", str(bad))):
        r = cli(*args)
        assert r.returncode == 1 and "line(s) 1" in r.stderr and "line(s) 2" in r.stderr, r.stderr
    r = cli("files", "upload", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    converted = tmp_path / "qa_chat.jsonl"
    r = cli("files", "convert", str(ROOT / "data" / "dspy_tutor" / "train.jsonl"), str(converted), "--to", "chat")
    assert r.returncode == 0 and "14 examples" in r.stdout, r.stderr
    assert "14 examples in chat format, OK" in cli("files", "validate", str(converted)).stdout
    r = cli("jobs", "create", BASE, "file-doesnotexist")
    assert r.returncode == 1 and "training_file" in r.stderr


def test_a_job_created_and_followed_to_the_end_then_models_history_registry(cli):
    fid = json.loads(cli("files", "upload", str(DATA / "tiny_train.jsonl"), "--json").stdout)["id"]
    r = cli("jobs", "create", BASE, fid, "--n-epochs", "1", "--batch-size", "4", "--suffix", "cli", "--follow")
    assert r.returncode == 0, r.stdout + r.stderr
    model = next(line.split("model: ")[1] for line in r.stdout.splitlines() if line.startswith("model: "))
    assert model.startswith(f"ft:{BASE}:") and "succeeded" in r.stdout
    assert model in cli("models", "list").stdout
    r = cli("models", "promote", "tutor", model, "--reason", "from the CLI")
    assert r.returncode == 0 and f"tutor -> {model}" in r.stdout, r.stderr
    history = cli("models", "history", model, "--json")
    assert [e["type"] for e in json.loads(history.stdout)][:1] == ["JobCreated"]
    reg = json.loads(cli("registry", "--as-of", str(2**40), "--json").stdout)
    assert {"alias": "tutor", "model": model} in [{k: a[k] for k in ("alias", "model")} for a in reg["aliases"]]
    r = cli("chat", "What is a noun?", "--model", model, "--no-retrieval", "--max-tokens", "4")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    job_id = json.loads(cli("jobs", "list", "--json").stdout)[0]["id"]
    assert cli("jobs", "get", job_id).returncode == 0


def test_following_a_cancelled_job_exits_with_its_status(cli):
    fid = json.loads(cli("files", "upload", str(DATA / "tiny_train.jsonl"), "--json").stdout)["id"]
    job = json.loads(cli("jobs", "create", BASE, fid, "--json").stdout)
    assert cli("jobs", "cancel", job["id"]).returncode == 0
    r = cli("jobs", "follow", job["id"])
    assert r.returncode == 3 and "cancelled" in r.stdout, r.stdout + r.stderr
