"""The eval gate (domain/projects.check_eval_gate), the promotion_eval setting's shape, and a run's counts
(domain/eval_runs): pure functions, exact numbers."""
import pytest

from domain.errors import Conflict, ValidationError
from domain.eval_runs import counts, fold, item_status
from domain.projects import ProjectSettings, check_eval_gate

GATE = {"eval_id": "eval_1", "criterion": "exact", "must_beat_current": True, "min_pass_rate": 0.5, "alias": "tutor"}


def run(id_: str, passed: int, total: int = 10) -> dict:
    return {"id": id_, "passed": passed, "total": total}


def test_a_better_model_passes_the_gate_with_its_numbers_in_the_reason():
    why = check_eval_gate(GATE, "tutor", "ft:new", run("r2", 8), "ft:old", run("r1", 6))
    assert "ft:new passed 8/10 on 'exact' (run r2)" in why and "more than ft:old's 6/10 (run r1)" in why


@pytest.mark.parametrize("candidate,current,words", [
    (None, run("r1", 6), "has no completed run of eval eval_1"),
    (run("r2", 4), run("r1", 2), "pass rate 0.40"),  # under min_pass_rate
    (run("r2", 6), run("r1", 6), "not more than ft:old's 6 of 10"),  # a tie does not win
    (run("r2", 7), None, "ft:old, has no completed run of eval eval_1 with the same items"),
])
def test_the_gate_refuses_with_409_promotion_refused_and_the_numbers(candidate, current, words):
    with pytest.raises(Conflict) as e:
        check_eval_gate(GATE, "tutor", "ft:new", candidate, "ft:old", current)
    assert e.value.code == "promotion_refused" and words in str(e.value)


def test_without_must_beat_current_only_the_pass_rate_counts_and_other_aliases_are_not_gated():
    gate = {**GATE, "must_beat_current": False}
    assert check_eval_gate(gate, "tutor", "ft:new", run("r2", 5), "ft:old", run("r1", 9))
    assert check_eval_gate(GATE, "other-alias", "ft:new", None, "ft:old", None) == ""
    assert check_eval_gate(GATE, "tutor", "ft:new", run("r2", 6), None, None)  # nothing promoted yet: no one to beat


def test_the_promotion_eval_setting_is_checked_and_normalized():
    s = ProjectSettings().updated({"promotion_eval": {"eval_id": "eval_1", "criterion": "exact"}})
    assert s.promotion_eval == {"eval_id": "eval_1", "criterion": "exact", "must_beat_current": True,
                                "min_pass_rate": 0.0, "alias": "tutor"}
    for bad, param in (({"criterion": "x"}, "promotion_eval.eval_id"),
                       ({"eval_id": "e", "criterion": "x", "min_pass_rate": 2}, "promotion_eval.min_pass_rate"),
                       ({"eval_id": "e", "criterion": "x", "must_beat_current": "yes"},
                        "promotion_eval.must_beat_current"),
                       ({"eval_id": "e", "criterion": "x", "extra": 1}, "promotion_eval.extra"),
                       ("eval_1", "promotion_eval")):
        with pytest.raises(ValidationError) as e:
            ProjectSettings().updated({"promotion_eval": bad})
        assert e.value.param == param
    with pytest.raises(ValidationError) as e:  # auto_* need the gate
        ProjectSettings().updated({"auto_promote": True})
    assert e.value.param == "auto_promote"
    assert ProjectSettings.from_dict(s.to_dict()) == s


def test_run_counts_follow_openai_an_item_passes_when_every_criterion_passes():
    crit = [{"name": "a"}, {"name": "b"}]
    both = [{"name": "a", "passed": True}, {"name": "b", "passed": True}]
    one = [{"name": "a", "passed": True}, {"name": "b", "passed": False}]
    broken = [{"name": "a", "passed": False, "error": {"code": "x"}}]
    graded = [{"status": item_status(both, False), "results": both},
              {"status": item_status(one, False), "results": one},
              {"status": item_status([], True), "results": []},  # the sample failed
              {"status": item_status(broken, False), "results": broken}]
    assert [g["status"] for g in graded] == ["pass", "fail", "error", "error"]
    rc, per = counts(graded, crit)
    assert rc == {"total": 4, "passed": 1, "failed": 1, "errored": 2}
    assert per == [{"testing_criteria": "a", "passed": 2, "failed": 1},
                   {"testing_criteria": "b", "passed": 1, "failed": 1}]


def test_a_runs_state_folds_attempts_cancels_and_first_gradings():
    created = {"id": "r", "eval_id": "e", "project": "p"}
    s = fold([("EvalRunCreated", created, 1), ("EvalRunStarted", {"attempt": 1}, 2),
              ("EvalItemGraded", {"index": 0, "v": 1}, 3), ("EvalRunAttemptLost", {"attempt": 1, "requeued": True}, 4)])
    assert (s.status, s.attempt, s.version, list(s.graded)) == ("queued", 2, 4, [0])
    s = fold([("EvalRunCreated", created, 1), ("EvalRunStarted", {"attempt": 1}, 2),
              ("EvalItemGraded", {"index": 0, "v": 1}, 3), ("EvalItemGraded", {"index": 0, "v": 2}, 4),
              ("EvalRunCancelRequested", {}, 5), ("EvalRunCanceled", {}, 6)])
    assert s.graded[0]["v"] == 1 and s.cancel_requested and s.terminal and s.status == "canceled"
