"""Bad input gets a clear 4xx JSON error naming the problem, and the log does not change."""
import json

import pytest

from tests.conftest import DATA

GOOD = (DATA / "tiny_train.jsonl").read_bytes()
LINES = GOOD.decode().splitlines()


@pytest.fixture(scope="module")
def trainer(stack):
    return stack.new_key("trainer")


@pytest.fixture(scope="module")
def good_file(stack, trainer):
    r = stack.http("POST", "/v1/files", trainer["key"], files={"file": ("t.jsonl", GOOD)},
                   data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def head(stack) -> int:
    return stack.sql("SELECT coalesce(max(global_position), 0) AS p FROM events")[0]["p"]


def assert_rejected(stack, status, fn, *, code=None, param=None, contains=()):
    before = head(stack)
    r = fn()
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code
    if param:
        assert err["param"] == param
    for text in contains:
        assert text in err["message"]
    # Workers of earlier tests may still append their own events; API requests append as a key.
    appended = stack.sql("SELECT type FROM events WHERE global_position > %s AND metadata->>'actor' LIKE 'key_%%'",
                         (before,))
    assert appended == [], "a rejected request must not append anything"
    return err


def with_line(n: int, replacement: str) -> bytes:
    lines = list(LINES)
    lines[n - 1] = replacement
    return "\n".join(lines).encode()


@pytest.mark.parametrize("content, category, line", [
    (with_line(3, "{this is not json"), "invalid_json", 3),
    (with_line(2, json.dumps({"text": "hi"})), "missing_messages_list", 2),
    (with_line(4, json.dumps({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a"}], "extra": 1})),
     "unrecognized_example_key", 4),
    (with_line(5, json.dumps({"messages": [{"role": "principal", "content": "q"},
                                           {"role": "assistant", "content": "a"}]})), "unrecognized_role", 5),
    (with_line(6, json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]})),
     "message_missing_key", 6),
    (with_line(7, json.dumps({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": ""}]})), "missing_content", 7),
    (with_line(8, json.dumps({"messages": [{"role": "user", "content": "q"}]})),
     "example_missing_assistant_message", 8),
    (with_line(9, json.dumps({"messages": [{"role": "user", "content": "word " * 9000},
                                           {"role": "assistant", "content": "a"}]})), "too_long", 9),
])
def test_each_bad_dataset_category_is_a_400_with_its_line(stack, trainer, content, category, line):
    contains = [f"[{category}]"] + ([f"line(s) {line}"] if line else [])
    assert_rejected(stack, 400, lambda: stack.http("POST", "/v1/files", trainer["key"],
                                                   files={"file": ("bad.jsonl", content)},
                                                   data={"purpose": "fine-tune"}),
                    code="invalid_file_format", param="file", contains=contains)


def test_a_training_file_with_too_few_examples_is_refused_when_a_job_names_it(stack, trainer):
    small = stack.http("POST", "/v1/files", trainer["key"], files={"file": ("small.jsonl", "\n".join(LINES[:3]))},
                       data={"purpose": "fine-tune"})
    assert small.status_code == 200  # fine as a validation file
    assert_rejected(stack, 400, job(stack, trainer["key"], model="smollm2-135m-instruct",
                                    training_file=small.json()["id"]),
                    param="training_file", contains=["3 example(s)", "at least 10", "[too_few_examples]"])


def test_an_upload_over_the_size_limit_is_413(stack, trainer):
    big = b"x" * (600 * 1024)
    assert_rejected(stack, 413, lambda: stack.http("POST", "/v1/files", trainer["key"],
                                                   files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"}))


def test_wrong_purpose_and_missing_file_field(stack, trainer):
    assert_rejected(stack, 400, lambda: stack.http("POST", "/v1/files", trainer["key"],
                                                   files={"file": ("t.jsonl", GOOD)}, data={"purpose": "vision"}),
                    param="purpose")
    assert_rejected(stack, 400, lambda: stack.http("POST", "/v1/files", trainer["key"],
                                                   data={"purpose": "fine-tune"}), param="file")


def job(stack, key, **body):
    return lambda: stack.http("POST", "/v1/fine_tuning/jobs", key, json=body)


def test_bad_job_requests(stack, trainer, good_file):
    k = trainer["key"]
    assert_rejected(stack, 400, job(stack, k, model="gpt-17-ultra", training_file=good_file),
                    code="model_not_available", param="model", contains=["gpt-17-ultra"])
    assert_rejected(stack, 400, job(stack, k, model="smollm2-135m-instruct", training_file="file-missing"),
                    param="training_file", contains=["file-missing"])
    assert_rejected(stack, 400, job(stack, k, model="smollm2-135m-instruct"), param="training_file")
    path = "method.supervised.hyperparameters."
    for hp, param in [({"n_epochs": -1}, path + "n_epochs"), ({"n_epochs": "ten"}, path + "n_epochs"),
                      ({"batch_size": "big"}, path + "batch_size"),
                      ({"learning_rate_multiplier": -2}, path + "learning_rate_multiplier")]:
        assert_rejected(stack, 400, job(stack, k, model="smollm2-135m-instruct", training_file=good_file,
                                        method={"type": "supervised", "supervised": {"hyperparameters": hp}}),
                        param=param)
    assert_rejected(stack, 400, job(stack, k, model="smollm2-135m-instruct", training_file=good_file,
                                    suffix="no spaces allowed"), param="suffix")
    assert_rejected(stack, 400, job(stack, k, model="smollm2-135m-instruct", training_file=good_file, seed="x"),
                    param="seed")
    assert_rejected(stack, 400, job(stack, k, model="smollm2-135m-instruct", training_file=good_file, color="red"),
                    contains=["color"])
    assert_rejected(stack, 400, lambda: stack.http("POST", "/v1/fine_tuning/jobs", k, data="not json",
                                                   headers={"Content-Type": "application/json"}))


def test_missing_and_invalid_keys_are_401(stack):
    assert_rejected(stack, 401, lambda: stack.http("GET", "/v1/fine_tuning/jobs"), code="invalid_api_key")
    assert_rejected(stack, 401, lambda: stack.http("GET", "/v1/files", "tl-not-a-key"), code="invalid_api_key")


def test_a_viewer_cannot_write_and_only_admins_manage_keys(stack, trainer):
    viewer = stack.new_key("viewer", project=trainer["project"])
    assert_rejected(stack, 403, lambda: stack.http("POST", "/v1/files", viewer["key"],
                                                   files={"file": ("t.jsonl", GOOD)}, data={"purpose": "fine-tune"}))
    assert_rejected(stack, 403, lambda: stack.http("POST", "/api/keys", trainer["key"], json={"role": "admin"}))
    assert stack.http("GET", "/v1/files", viewer["key"]).status_code == 200


def test_another_projects_objects_are_404(stack, trainer, good_file):
    other = stack.new_key("trainer")  # a different project
    r = stack.http("POST", "/v1/fine_tuning/jobs", trainer["key"],
                   json={"model": "smollm2-135m-instruct", "training_file": good_file})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    stack.http("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", trainer["key"])
    for path in (f"/v1/fine_tuning/jobs/{job_id}", f"/v1/fine_tuning/jobs/{job_id}/events",
                 f"/v1/files/{good_file}", f"/v1/files/{good_file}/content"):
        assert_rejected(stack, 404, lambda p=path: stack.http("GET", p, other["key"]))
    assert_rejected(stack, 404, lambda: stack.http("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel", other["key"]))
    assert_rejected(stack, 400, job(stack, other["key"], model="smollm2-135m-instruct", training_file=good_file),
                    param="training_file")
    assert stack.http("GET", "/v1/fine_tuning/jobs", other["key"]).json()["data"] == []
