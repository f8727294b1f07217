"""Issue 10, webhooks, against the running service and a real HTTP receiver on loopback: retried with backoff
until the receiver takes it (delivered once, the Standard Webhooks signature valid, each attempt recorded), in
order and without gaps or repeats across a restart of the delivering process, only the project's own events,
and no SSRF (hosts outside the operator's allowlist, credentials in URLs, client-chosen secrets refused)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import DATA
from tests.helpers import wait_for

BASE = "smollm2-135m-instruct"


class Receiver:
    """An endpoint that answers 500 to its first `fail` requests, then 204; it keeps every request."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                receiver.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                failing = receiver.fail > 0
                receiver.fail -= 1 if failing else 0
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def admin(stack):
    return stack.new_key("admin")


def create_hook(stack, key: str, url: str, types: list[str]) -> dict:
    r = stack.http("POST", "/api/webhooks", key, json={"url": url, "event_types": types})
    assert r.status_code == 201, r.text
    return r.json()


def verified(receiver: Receiver, secret: str, skip: int = 0) -> list[dict]:
    """Every request after the first `skip`, its signature checked (raises if it is not valid)."""
    return [{**Webhook(secret).verify(r["body"], r["headers"]), "_id": r["headers"]["webhook-id"]}
            for r in receiver.requests[skip:]]


def test_a_failing_receiver_is_retried_until_it_takes_the_event_once_signed(stack, admin):
    k = admin["key"]
    receiver = Receiver(fail=2)
    try:
        hook = create_hook(stack, k, receiver.url, ["job.created", "job.cancelled"])
        assert hook["secret"].startswith("whsec_")
        content = (DATA / "tiny_train.jsonl").read_bytes()
        train = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", content)},
                           data={"purpose": "fine-tune"}).json()["id"]
        job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": BASE, "training_file": train}).json()
        stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
        wait_for(lambda: len(receiver.requests) >= 4, 60, what="two failures, then both events delivered")
        ids = [r["headers"]["webhook-id"] for r in receiver.requests]
        assert ids[0] == ids[1] == ids[2] != ids[3]  # the same message retried, then the next one
        events = verified(receiver, hook["secret"], skip=2)  # the accepted ones: their signatures are valid
        assert [e["type"] for e in events] == ["job.created", "job.cancelled"]
        assert events[0]["data"]["id"] == job["id"] and events[0]["data"]["stream"] == f"job-{job['id']}"
        assert events[0]["data"]["position"] < events[1]["data"]["position"]
        with pytest.raises(WebhookVerificationError):  # another secret does not verify
            Webhook("whsec_" + "A" * 43 + "=").verify(receiver.requests[2]["body"], receiver.requests[2]["headers"])
        detail = stack.http("GET", f"/api/webhooks/{hook['id']}", k).json()
        attempts = detail["attempts"][::-1]
        assert [(a["type"], a["attempt"]) for a in attempts[:3]] == [("failed", 1), ("failed", 2), ("delivered", 3)]
        assert attempts[0]["status"] == 500 and detail["delivered"] >= 2
        assert "secret" not in json.dumps(detail)
    finally:
        receiver.close()


def test_deliveries_continue_in_order_across_a_restart_without_gaps_or_repeats(stack, admin):
    k = admin["key"]
    receiver = Receiver()
    try:
        hook = create_hook(stack, k, receiver.url, ["alias.promoted"])
        for i in range(3):
            r = stack.http("POST", "/api/aliases/tutor", k, json={"model": BASE, "reason": f"before {i}"})
            assert r.status_code == 200, r.text
        wait_for(lambda: len(receiver.requests) == 3, 30, what="three deliveries")
        stack.kill_tree("dispatcher")  # the deliverer dies with it
        for i in range(3):
            stack.http("POST", "/api/aliases/tutor", k, json={"model": BASE, "reason": f"while down {i}"})
        stack.start("dispatcher")
        wait_for(lambda: len(receiver.requests) >= 6, 60, what="the events made while it was down")
        events = verified(receiver, hook["secret"])
        reasons = [e["data"]["reason"] for e in events]
        assert reasons == [f"before {i}" for i in range(3)] + [f"while down {i}" for i in range(3)]
        assert len({e["_id"] for e in events}) == 6  # each once
        other = stack.new_key("admin")["key"]  # another project's promotion is not ours to hear about
        stack.http("POST", "/api/aliases/tutor", other, json={"model": BASE, "reason": "elsewhere"})
        stack.http("POST", "/api/aliases/tutor", k, json={"model": BASE, "reason": "last"})
        wait_for(lambda: len(receiver.requests) >= 7, 30, what="the last one")
        assert [e["data"]["reason"] for e in verified(receiver, hook["secret"])][6:] == ["last"]
    finally:
        receiver.close()


def test_webhooks_go_only_where_the_operator_allows_and_never_carry_a_chosen_secret(stack, admin):
    k = admin["key"]
    for body, param in (({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
                        ({"url": "http://localhost:8000/hook"}, "url"),
                        ({"url": "http://user:pw@127.0.0.1/hook"}, "url"),
                        ({"url": "file:///etc/passwd"}, "url"),
                        ({"url": "http://127.0.0.1/hook", "secret": "whsec_mine"}, "secret"),
                        ({"url": "http://127.0.0.1/hook", "event_types": ["job.everything"]}, "event_types")):
        r = stack.http("POST", "/api/webhooks", k, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = stack.http("POST", "/api/webhooks", k, json={"url": "http://10.0.0.1/hook"})
    assert r.json()["error"]["code"] == "url_not_allowed"
    viewer = stack.new_key("viewer", project=admin["project"])["key"]
    assert stack.http("POST", "/api/webhooks", viewer, json={"url": "http://127.0.0.1/h"}).status_code == 403
    hook = create_hook(stack, k, "http://127.0.0.1:9/hook", ["model.registered"])
    assert stack.http("GET", f"/api/webhooks/{hook['id']}", stack.new_key("admin")["key"]).status_code == 404
    assert stack.http("DELETE", f"/api/webhooks/{hook['id']}", k).status_code == 200
    assert hook["id"] not in {w["id"] for w in stack.http("GET", "/api/webhooks", k).json()["data"]}
