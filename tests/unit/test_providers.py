"""Delegation's pure parts: the providers file, key scrubbing, error classes, the followed job's state and
the project settings that govern delegation."""
from __future__ import annotations

import httpx
import openai
import pytest

from domain.errors import ValidationError
from domain.jobs import fold
from domain.projects import ProjectSettings
from eventlog import providers


def load(tmp_path, monkeypatch, text: str | None):
    path = tmp_path / "providers.toml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setenv("TUNELOG_PROVIDERS_FILE", str(path))
    return providers.load(tmp_path)


def test_openai_is_configured_from_the_standard_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    config = load(tmp_path, monkeypatch, None)
    provider, remote = config.split("openai/gpt-4o-mini-2024-07-18")
    assert provider.base_url == "http://127.0.0.1:9/v1" and remote == "gpt-4o-mini-2024-07-18"
    assert provider.key_source == "the environment variable OPENAI_API_KEY"
    assert config.price("openai/gpt-4o-mini-2024-07-18") == 3.0


def test_a_named_provider_and_prices_come_from_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTRICT_KEY", "tl-secret-value")
    config = load(tmp_path, monkeypatch, '[providers.district]\nbase_url = "http://gpu:8000/v1/"\n'
                  'api_key_env = "DISTRICT_KEY"\nchat_extra_body = { retrieval = false }\n'
                  '[prices]\n"district/smollm2-135m-instruct" = 0.25\n')
    provider, remote = config.split("district/ft:smollm2-135m-instruct:p::abcd")
    assert remote == "ft:smollm2-135m-instruct:p::abcd" and provider.base_url == "http://gpu:8000/v1"
    assert provider.api_key() == "tl-secret-value" and provider.chat_extra_body == {"retrieval": False}
    assert config.price("district/smollm2-135m-instruct") == 0.25
    assert config.split("nobody/model") is None and config.split("smollm2-135m-instruct") is None
    assert config.split("district/") is None


def test_a_key_file_is_read_when_asked(tmp_path, monkeypatch):
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    config = load(tmp_path, monkeypatch,
                  f'[providers.x]\nbase_url = "https://x.example/v1"\napi_key_file = "{secret}"\n')
    assert config.providers["x"].api_key() == "sk-from-file"
    secret.unlink()
    assert config.providers["x"].api_key() is None


@pytest.mark.parametrize("text, message", [
    ('[providers.x]\nbase_url = "https://x/v1"\napi_key = "sk-123"\n', "not the key"),
    ('[providers.x]\nbase_url = "https://x/v1"\n', "exactly one of api_key_env"),
    ('[providers.x]\nbase_url = "https://x/v1"\napi_key_env = "A"\napi_key_file = "/k"\n', "exactly one"),
    ('[providers.X]\nbase_url = "https://x/v1"\napi_key_env = "A"\n', "lowercase"),
    ('[providers.hf]\nbase_url = "https://x/v1"\napi_key_env = "A"\n', "not hf"),
    ('[providers.x]\nbase_url = "file:///etc"\napi_key_env = "A"\n', "http(s) URL"),
    ('[providers.x]\nbase_url = "https://x/v1"\napi_key_env = "A"\ncolour = 1\n', "unknown key"),
    ('[prices]\n"openai/x" = -1\n', "at least 0"),
    ("[providers\n", "not readable TOML"),
])
def test_an_invalid_providers_file_is_refused_with_the_reason(tmp_path, monkeypatch, text, message):
    with pytest.raises(providers.ProviderConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, monkeypatch, text)


def test_a_providers_message_loses_the_key_and_anything_shaped_like_one(monkeypatch):
    monkeypatch.setenv("K", "opaque-secret-123456")
    p = providers.Provider("x", "https://x/v1", api_key_env="K")
    text = p.scrub("bad key opaque-secret-123456; also sk-abcdef123456 and sk-wro*******ae87 and ****wxyz end")
    assert "opaque-secret" not in text and "sk-abc" not in text and "ae87" not in text and "wxyz" not in text
    assert text.endswith("end")


def _status_error(cls, status: int, body: dict):
    request = httpx.Request("POST", "https://x/v1/fine_tuning/jobs")
    return cls("error", response=httpx.Response(status, request=request), body=body)


def test_rate_limits_server_errors_and_timeouts_are_transient_and_the_rest_final():
    assert providers.classify(_status_error(openai.RateLimitError, 429, {"error": {"message": "slow down"}}))[0]
    assert providers.classify(_status_error(openai.InternalServerError, 503, {}))[0]
    assert providers.classify(openai.APITimeoutError(httpx.Request("GET", "https://x")))[0]
    final = providers.classify(_status_error(openai.BadRequestError, 400, {"error": {
        "message": "Model x is not available for fine-tuning", "code": "model_not_available"}}))
    assert final == (False, "model_not_available", "400: Model x is not available for fine-tuning")
    assert providers.classify(_status_error(openai.AuthenticationError, 401, {}))[:2] == (False, "invalid_api_key")


def test_a_delegated_jobs_status_follows_its_remote_job():
    created = {"id": "ftjob-1", "project": "p", "model": "openai/m", "backend": "provider", "queue": "cpu",
               "training_file": "file-1", "hyperparameters": {}, "method": {}, "created_at": 1}
    events = [("JobCreated", created, 1), ("JobStarted", {"attempt": 1, "worker": "w", "started_at": 2}, 2)]
    assert fold(events).status == "running" and fold(events).delegated and fold(events).remote is None
    events.append(("RemoteJobCreated", {"provider": "openai", "remote_job_id": "ftjob-r", "remote_model": "m",
                                        "remote_status": "validating_files", "remote_files": {},
                                        "found_existing": False, "at": 3}, 3))
    state = fold(events)
    assert state.status == "validating_files" and state.remote["remote_job_id"] == "ftjob-r"
    events.append(("RemoteJobUpdated", {"remote_status": "running", "at": 4, "estimated_finish": 99}, 4))
    state = fold(events)
    assert state.status == "running" and state.estimated_finish == 99 and state.remote["remote_status"] == "running"
    events.append(("RemoteJobUpdated", {"remote_status": "succeeded", "at": 5}, 5))
    assert fold(events).status == "running"  # the end comes as JobSucceeded (with the registered model)


def test_delegation_settings_are_validated_with_exact_messages():
    s = ProjectSettings().updated({"local_only": True, "monthly_budget_usd": 12, "pii_roster": [" Ana ", "Ana", "Bo"]})
    assert s.local_only and s.monthly_budget_usd == 12.0 and s.pii_roster == ("Ana", "Bo")
    assert ProjectSettings.from_dict(s.to_dict()) == s
    for patch, message in [({"monthly_budget_usd": -1}, "between 0 and 1e9"), ({"monthly_budget_usd": True}, "number"),
                           ({"pii_roster": "Ana"}, "list"), ({"pii_roster": [""]}, "pii_roster[0]"),
                           ({"pii_roster": ["x" * 101]}, "1-100"), ({"local_only": "yes"}, "true or false")]:
        with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
            ProjectSettings().updated(patch)
    assert ProjectSettings().updated({"monthly_budget_usd": None}).monthly_budget_usd is None


def test_what_a_provider_sends_is_cleaned_before_the_log_keeps_it():
    assert providers.clean_text("a\x00b\ud800c" + "x" * 50, 10) == "ab?cxxxxxx"
    assert providers.clean_text(None) == "" and providers.clean_text(12) == "12"
    assert providers.clean_number(float("nan")) is None and providers.clean_number(float("inf")) is None
    assert providers.clean_number(True) is None and providers.clean_number("3") is None
    assert providers.clean_number(2.5) == 2.5 and providers.clean_number(10**20) is None


def test_a_key_pasted_where_its_variables_name_belongs_is_refused(tmp_path, monkeypatch):
    with pytest.raises(providers.ProviderConfigError, match="not the key itself"):
        load(tmp_path, monkeypatch, '[providers.x]\nbase_url = "https://x/v1"\napi_key_env = "sk-live-abc123"\n')
    with pytest.raises(providers.ProviderConfigError, match="without credentials"):
        load(tmp_path, monkeypatch, '[providers.x]\nbase_url = "https://u:p@x/v1"\napi_key_env = "K"\n')
    with pytest.raises(providers.ProviderConfigError, match="at least 0"):
        load(tmp_path, monkeypatch, '[prices]\n"openai/x" = nan\n')


def test_a_delegated_jobs_auto_epochs_are_estimated_as_openai_chooses_them():
    from api.openai_compat import openai_auto_epochs

    assert [openai_auto_epochs(n) for n in (1, 10, 20, 100, 8000, 10000, 100000)] == [25, 10, 5, 3, 3, 2, 1]
