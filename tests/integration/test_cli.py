"""The operator CLI against a real database: keys create, events, replay."""
import json
import os
import subprocess
import sys

from eventlog.db import pool


def tunelog(db_url: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "eventlog.cli", *args], env={**os.environ, "DATABASE_URL": db_url},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_keys_create_prints_a_key_once_and_the_log_keeps_only_its_hash(db_url):
    out = json.loads(tunelog(db_url, "keys", "create", "--role", "viewer", "--project", "school-a"))
    assert out["key"].startswith("tl-") and out["role"] == "viewer" and out["project"] == "school-a"
    events = [json.loads(line) for line in tunelog(db_url, "events").splitlines()]
    assert [e["type"] for e in events] == ["KeyCreated"]
    assert out["key"] not in json.dumps(events)
    with pool(db_url).connection() as c:
        row = c.execute("SELECT role, project FROM api_keys WHERE id = %s", (out["id"],)).fetchone()
    assert row == {"role": "viewer", "project": "school-a"}


def test_replay_rebuilds_the_read_models(db_url):
    tunelog(db_url, "keys", "create", "--role", "trainer")
    result = json.loads(tunelog(db_url, "replay"))
    assert result["events"] == 1
    with pool(db_url).connection() as c:
        assert c.execute("SELECT count(*) AS n FROM api_keys").fetchone()["n"] == 1
