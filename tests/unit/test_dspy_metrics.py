"""The DSPy job's metrics, the program's last gate before it is saved (fit_state), and the create-time
estimate of a job's LM calls. No model: DSPy's DummyLM stands in for the judge."""
from __future__ import annotations

import pytest

from eventlog import programs
from tests.helpers import program_state


def _example(answer: str, question: str = "Q?"):
    import dspy

    return dspy.Example(question=question, context=[], answer=answer).with_inputs("question", "context")


def _pred(answer: str):
    import dspy

    return dspy.Prediction(answer=answer)


@pytest.fixture(scope="module")
def make_metric():
    programs.dspy_offline()
    from workers.dspy_opt import make_metric

    return make_metric


def test_exact_match_and_contains_compare_normalized_whole_tokens(make_metric):
    em, contains = make_metric("exact_match"), make_metric("contains")
    assert em(_example("Paris"), _pred("paris.")) == 1.0
    assert em(_example("Paris"), _pred("It is Paris")) == 0.0
    assert contains(_example("Paris"), _pred("It is Paris!")) == 1.0
    assert contains(_example("b"), _pred("bees make honey")) == 0.0  # not a substring match
    assert contains(_example("carbon dioxide"), _pred("Plants take in carbon dioxide.")) == 1.0


def test_an_empty_answer_never_scores_even_against_a_gold_answer_that_normalizes_to_nothing(make_metric):
    for name in ("exact_match", "contains", "f1"):
        metric = make_metric(name)
        assert metric(_example("The"), _pred("")) == 0.0
        assert metric(_example("A"), _pred("   ")) == 0.0
    assert make_metric("exact_match")(_example("A"), _pred("a")) == 1.0  # compared as written
    assert make_metric("exact_match")(_example("A"), _pred("B")) == 0.0


def test_while_bootstrapping_a_trace_is_a_demo_only_when_it_scores_well_enough(make_metric):
    f1 = make_metric("f1")
    assert f1(_example("the capital city of France is Paris"), _pred("Paris"), trace=[]) is False  # F1 1/3
    assert f1(_example("Paris"), _pred("Paris"), trace=[]) is True
    assert make_metric("contains")(_example("Paris"), _pred("Paris it is"), trace=[]) is True


def test_semantic_f1_asks_the_judge_with_dspy_fields(make_metric):
    import dspy
    from dspy.utils.dummies import DummyLM

    judge = DummyLM([{"reasoning": "same", "recall": "0.8", "precision": "1.0"}])
    dspy.configure(adapter=programs.classes()[2]())
    score = make_metric("semantic_f1", judge)(_example("Madrid", "Capital of Spain?"), _pred("Madrid"))
    assert score == pytest.approx(2 * 0.8 * 1.0 / 1.8, abs=1e-3)


def test_a_judge_that_cannot_be_read_scores_zero_not_a_crash(make_metric):
    from dspy.utils.dummies import DummyLM

    judge = DummyLM([{"verdict": ""}] * 3)
    assert make_metric("llm_judge", judge)(_example("Madrid"), _pred("Madrid")) == 0.0


def test_fit_state_drops_demos_the_gate_refuses_instead_of_failing_the_job():
    raw = program_state(demos=[{"question": "Q1?", "answer": "A1", "augmented": True},
                               {"question": "Q2?", "answer": ""},  # an empty answer a metric let through
                               {"question": "Q3?", "answer": "x" * (programs.MAX_DEMO_TEXT + 1)},
                               {"question": "Q4?", "answer": "A4"}], instructions="")
    state, dropped = programs.fit_state(raw)
    assert dropped == 2 and [d["question"] for d in state["respond"]["demos"]] == ["Q1?", "Q4?"]
    assert state["respond"]["signature"]["instructions"] == programs.INSTRUCTIONS
    assert programs.check_state(programs.state_bytes(state)) == state


def test_fit_state_drops_the_last_demos_while_the_program_is_over_its_size_limit():
    big = [{"question": f"Q{i}?", "answer": "y" * 15_000} for i in range(programs.MAX_DEMOS)]
    state, dropped = programs.fit_state(program_state(demos=big))
    assert dropped > 0 and len(programs.state_bytes(state)) <= programs.MAX_STATE_BYTES
    assert [d["question"] for d in state["respond"]["demos"]] == [f"Q{i}?" for i in range(len(big) - dropped)]


def test_the_estimate_of_lm_calls_follows_the_optimizers_plan():
    from api.openai_compat import _dspy_calls

    bootstrap = {"optimizer": "bootstrap_few_shot", "metric": "contains", "num_candidate_programs": None}
    assert _dspy_calls(bootstrap, 8, 3) == 2 * 3 + 8
    search = {"optimizer": "bootstrap_few_shot_with_random_search", "metric": "llm_judge", "num_candidate_programs": 2}
    assert _dspy_calls(search, 4, 2) == (2 + 3 + 2) * 4 + 4 * 3
    assert _dspy_calls({"optimizer": "mipro_v2", "metric": "f1", "num_candidate_programs": None}, 8, 3) is None
