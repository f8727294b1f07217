"""Issue 10: the scripts in examples/ run as a user runs them (a subprocess, TUNELOG_URL and TUNELOG_API_KEY)
against the running service, in the order a school would: fine-tune with the openai SDK, a DSPy job, the
improvement loop (chat -> corrections -> dataset -> retrain -> gated promotion), then the admin's audit of an
answer from that loop."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(stack):
    admin = stack.new_key("admin")
    assert stack.http("PUT", "/api/settings", admin["key"], json={"store_chat_text": True}).status_code == 200
    wait_for(lambda: (stack.sql("SELECT settings FROM project_settings WHERE project = %s", (admin["project"],))
                      or [{}])[0].get("settings", {}).get("store_chat_text"), 30, what="the setting projected")

    def go(script: str, *args: str) -> str:
        env = {**os.environ, "TUNELOG_URL": stack.base_url, "TUNELOG_API_KEY": admin["key"]}
        r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], env=env, capture_output=True,
                           text=True, timeout=900, cwd=ROOT / "examples")
        assert r.returncode == 0, f"{script} failed:\n{r.stdout}\n{r.stderr}"
        return r.stdout
    return go


def test_finetune_with_the_openai_sdk(run):
    out = run("finetune_openai_sdk.py")
    assert "The job has successfully completed" in out and "says:" in out


def test_a_dspy_job(run):
    out = run("dspy_job.py")
    assert "demos:" in out and "dspy:" in out and '"runs_on": "smollm2-135m-instruct"' in out


def test_the_improvement_loop_then_an_audit_of_one_of_its_answers(run):
    out = run("improvement_loop.py")
    assert "training file from feedback" in out and ("promoted:" in out or "promotion refused by the gate" in out)
    assert "trained from the answers of: ['smollm2-135m-instruct']" in out
    audit = run("audit.py", "What is 2 times 3?")
    assert "answered by smollm2-135m-instruct (alias tutor" in audit and "'temperature'" in audit
    assert "the aliases then:" in audit
