"""Webhook rules without a server: the host allowlist (no SSRF), event types, and derived signing secrets that
verify with the Standard Webhooks library."""
from __future__ import annotations

import datetime

import pytest
from standardwebhooks.webhooks import Webhook

from domain.errors import ValidationError
from eventlog import webhooks


@pytest.fixture(autouse=True)
def allow(monkeypatch):
    monkeypatch.setenv("TUNELOG_WEBHOOK_HOSTS", "hooks.school.example, 127.0.0.1")
    monkeypatch.delenv("TUNELOG_WEBHOOK_KEY", raising=False)


@pytest.mark.parametrize("url", ["https://hooks.school.example/in", "http://127.0.0.1:8080/hook",
                                 "https://HOOKS.school.example/x?y=1"])
def test_urls_on_allowed_hosts_are_taken(url):
    assert webhooks.check_url(url) == url


@pytest.mark.parametrize("url, code", [
    ("https://evil.example/in", "url_not_allowed"), ("http://169.254.169.254/", "url_not_allowed"),
    ("http://hooks.school.example.evil.example/", "url_not_allowed"), ("http://localhost/", "url_not_allowed"),
    ("ftp://hooks.school.example/", "invalid_request_error"), ("https://u:p@hooks.school.example/", None),
    ("http://127.0.0.1:99999/", None), ("", None), (None, None), ("x" * 3000, None)])
def test_other_urls_are_refused(url, code):
    with pytest.raises(ValidationError) as e:
        webhooks.check_url(url)
    assert e.value.param == "url"
    if code:
        assert e.value.code == code


def test_no_allowlist_means_no_webhooks(monkeypatch):
    monkeypatch.setenv("TUNELOG_WEBHOOK_HOSTS", "")
    with pytest.raises(ValidationError) as e:
        webhooks.check_url("http://127.0.0.1/")
    assert "TUNELOG_WEBHOOK_HOSTS" in e.value.message


def test_event_types_default_to_all_and_unknown_ones_are_refused():
    assert webhooks.check_types(None) == sorted(webhooks.EVENT_TYPES)
    assert webhooks.check_types(["job.failed", "job.failed", "alias.promoted"]) == ["alias.promoted", "job.failed"]
    for bad in ([], ["job.everything"], "job.failed", [1]):
        with pytest.raises(ValidationError):
            webhooks.check_types(bad)


def test_a_derived_secret_is_stable_per_webhook_and_verifies_what_it_signed(tmp_path):
    a, b = webhooks.secret_for(tmp_path, "wh_a"), webhooks.secret_for(tmp_path, "wh_b")
    assert a == webhooks.secret_for(tmp_path, "wh_a") and a != b and a.startswith("whsec_")
    assert (tmp_path / "webhook_key").stat().st_mode & 0o777 == 0o600
    now = datetime.datetime.now(datetime.UTC)
    body = '{"type":"job.failed"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(a).sign("msg_1", now, body)}
    assert Webhook(a).verify(body, headers) == {"type": "job.failed"}
    with pytest.raises(Exception):  # noqa: B017 - the library's verification error
        Webhook(b).verify(body, headers)


def test_a_short_or_empty_webhook_key_is_never_used_to_sign(tmp_path):
    (tmp_path / "webhook_key").write_bytes(b"")
    with pytest.raises(RuntimeError, match="shorter than"):
        webhooks.secret_for(tmp_path, "wh_a")
    assert not list(tmp_path.glob(".webhook_key.*"))  # no temporary key left behind either
