"""The job state machine and hyperparameter validation."""
import pytest

from domain.configs import SupervisedHyperparameters, parse_method
from domain.errors import ValidationError
from domain.jobs import decide_lost_attempt, fold

CREATED = ("JobCreated", {"id": "ftjob-1", "project": "p", "model": "m", "backend": "hf-lora", "queue": "cpu",
                          "training_file": "file-1", "validation_file": None, "hyperparameters": {},
                          "method": {}, "suffix": None, "seed": 1, "metadata": None, "created_at": 10}, 1)


def test_created_job_is_queued_then_running_then_succeeded():
    s = fold([CREATED, ("JobStarted", {"attempt": 1, "worker": "w", "started_at": 11}, 2),
              ("JobSucceeded", {"fine_tuned_model": "ft:x", "trained_tokens": 5, "artifact_path": "a", "at": 12}, 3)])
    assert (s.status, s.fine_tuned_model, s.trained_tokens, s.finished_at, s.version) == ("succeeded", "ft:x", 5, 12, 3)


def test_a_lost_attempt_is_requeued_until_the_retry_limit_then_fails():
    running = fold([CREATED, ("JobStarted", {"attempt": 1, "worker": "w", "started_at": 11}, 2)])
    events = decide_lost_attempt(running, max_attempts=2, reason="lease expired", now=20)
    assert [t for t, _ in events] == ["JobAttemptLost"]
    again = fold([CREATED, ("JobStarted", {"attempt": 1, "worker": "w", "started_at": 11}, 2),
                  (events[0][0], events[0][1], 3), ("JobStarted", {"attempt": 2, "worker": "w2", "started_at": 21}, 4)])
    assert again.attempt == 2 and again.status == "running"
    final = decide_lost_attempt(again, max_attempts=2, reason="lease expired", now=30)
    assert [t for t, _ in final] == ["JobAttemptLost", "JobFailed"]
    assert final[1][1]["error"]["code"] == "worker_lost"


def test_unknown_event_types_only_advance_the_version():
    s = fold([CREATED, ("SomethingNew", {}, 2)])
    assert s.status == "queued" and s.version == 2


@pytest.mark.parametrize("hp, param", [
    ({"n_epochs": -1}, "hyperparameters.n_epochs"),
    ({"n_epochs": "three"}, "hyperparameters.n_epochs"),
    ({"batch_size": 0}, "hyperparameters.batch_size"),
    ({"learning_rate_multiplier": 0}, "hyperparameters.learning_rate_multiplier"),
    ({"learning_rate_multiplier": "fast"}, "hyperparameters.learning_rate_multiplier"),
    ({"warmup": 3}, "hyperparameters.warmup"),
])
def test_bad_hyperparameters_name_the_parameter(hp, param):
    with pytest.raises(ValidationError) as e:
        SupervisedHyperparameters.from_dict(hp)
    assert e.value.param == param


def test_auto_hyperparameters_resolve_from_the_dataset_size():
    resolved = SupervisedHyperparameters().resolve(64)
    assert {k: resolved[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")} == {
        "n_epochs": 2, "batch_size": 6, "learning_rate_multiplier": 1.0}
    assert resolved["lora"] is True and resolved["lora_r"] == 16 and resolved["deepspeed"] is None
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    assert parse_method(method, None)[1].n_epochs == 3
    with pytest.raises(ValidationError, match="method.type"):
        parse_method({"type": "magic"}, None)


def test_old_event_shapes_are_upcast_on_read():
    from domain import events

    events.UPCASTERS["JobQueuedV0"] = lambda d: ("JobAttemptLost", {**d, "requeued": True, "reason": "legacy"})
    try:
        assert events.upcast("JobQueuedV0", {"attempt": 1, "at": 5}) == (
            "JobAttemptLost", {"attempt": 1, "at": 5, "requeued": True, "reason": "legacy"})
        assert events.upcast("JobStarted", {"attempt": 1}) == ("JobStarted", {"attempt": 1})
    finally:
        del events.UPCASTERS["JobQueuedV0"]
