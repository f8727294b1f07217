"""The dspy method's data and options: the DSPy example format, question/answer pairs read from chat files, and
method.dspy's options, each refusal with its exact param."""
import json

import pytest

from domain.configs import RESOLVED_KEYS, DspyOptions, parse_method
from domain.datasets import FORMATS, check_dspy_jsonl, check_jsonl, detect_format, dspy_examples
from domain.errors import ValidationError

P = "method.dspy"


def jsonl(lines: list) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()


def ex(i: int = 0, **extra) -> dict:
    return {"question": f"Question {i}?", "answer": f"Answer {i}.", **extra}


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def pref() -> dict:
    return {"input": {"messages": [{"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}]}


def dspy_rejected(lines: list, min_examples: int = 1) -> str:
    with pytest.raises(ValidationError) as e:
        check_dspy_jsonl(jsonl(lines), min_examples=min_examples, max_tokens=1000)
    assert e.value.status == 400 and e.value.param == "file" and e.value.code == "invalid_file_format"
    assert e.value.message.startswith("Invalid training file: ")
    return e.value.message


def examples_rejected(lines: list) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        dspy_examples(jsonl(lines))
    assert e.value.status == 400 and e.value.param == "training_file" and e.value.code == "invalid_file_format"
    return e.value


# ---- the DSPy example format ----
def test_a_valid_dspy_file_passes_with_format_dspy_and_token_stats():
    report = check_dspy_jsonl(jsonl([ex(i) for i in range(4)]), min_examples=3, max_tokens=1000,
                              count_tokens=lambda m: 7)
    assert report.stats() == {"n_examples": 4, "total_tokens": 28, "max_tokens": 7, "format": "dspy"}


def test_an_example_is_counted_as_a_user_question_with_its_context_and_an_assistant_answer():
    seen = []

    def count(messages):
        seen.append(messages)
        return sum(len(m["content"]) for m in messages)

    lines = [{"question": "Q", "answer": "AA"}, {"question": "Q", "answer": "A", "context": "ctx"},
             {"question": "Q", "answer": "A", "context": ["c1", "c2"], "metadata": {"topic": "x"}}]
    report = check_dspy_jsonl(jsonl(lines), min_examples=1, max_tokens=1000, count_tokens=count)
    assert seen == [
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "AA"}],
        [{"role": "user", "content": "Q\nctx"}, {"role": "assistant", "content": "A"}],
        [{"role": "user", "content": "Q\nc1\nc2"}, {"role": "assistant", "content": "A"}],
    ]
    assert (report.total_tokens, report.max_tokens) == (3 + 6 + 8, 8)


def test_an_example_over_max_tokens_is_too_long():
    with pytest.raises(ValidationError, match=r"\[too_long\] on line\(s\) 2 \(line 2: 13 tokens > 10\)"):
        check_dspy_jsonl(jsonl([{"question": "Q", "answer": "A"}, {"question": "Q", "answer": "x" * 12}]),
                         min_examples=1, max_tokens=10,
                         count_tokens=lambda m: sum(len(x["content"]) for x in m))


@pytest.mark.parametrize("bad, category, detail", [
    ({"answer": "a"}, "missing_question", ""),
    ({"question": "", "answer": "a"}, "missing_question", "got ''"),
    ({"question": "  ", "answer": "a"}, "missing_question", "got '  '"),
    ({"question": ["q"], "answer": "a"}, "missing_question", "got ['q']"),
    ({"question": "q"}, "missing_answer", ""),
    ({"question": "q", "answer": 42}, "missing_answer", "got 42"),
    ({"question": "q", "answer": "a", "context": 3}, "invalid_context", "got 3"),
    ({"question": "q", "answer": "a", "context": None}, "invalid_context", "got None"),
    ({"question": "q", "answer": "a", "context": ["ok", {"x": 1}]}, "invalid_context",
     "item 1 is {'x': 1}, not a string"),
    ({"question": "q", "answer": "a", "context": ["c"] * 51}, "invalid_context", "got a list of 51"),
    ({"question": "q", "answer": "a", "rationale": "r"}, "unrecognized_example_key", "rationale"),
    ("[1, 2]", "data_type", ""),
    ("{not json", "invalid_json", None),
])
def test_each_dspy_problem_is_named_with_its_line(bad, category, detail):
    message = dspy_rejected([ex(1), bad, ex(3)])
    assert f"[{category}] on line(s) 2" in message
    if detail:
        assert f"(line 2: {detail})" in message


def test_a_context_of_50_strings_or_an_empty_list_is_fine():
    lines = [ex(1, context=["c"] * 50), ex(2, context=[]), ex(3, context="")]
    assert check_dspy_jsonl(jsonl(lines), min_examples=1, max_tokens=10).n_examples == 3


def test_every_bad_line_of_a_dspy_file_is_reported_not_only_the_first():
    lines = [ex(1), {"answer": "a"}, ex(3), "", {"question": "q", "answer": "", "context": 1, "extra": 1},
             {"answer": "b"}, "oops"]
    message = dspy_rejected(lines)
    assert "[missing_question] on line(s) 2, 6" in message
    assert "[missing_answer] on line(s) 5 (line 5: got '')" in message
    assert "[invalid_context] on line(s) 5 (line 5: got 1)" in message
    assert "[unrecognized_example_key] on line(s) 5 (line 5: extra)" in message
    assert "[invalid_json] on line(s) 7" in message


def test_a_dspy_file_needs_min_examples():
    assert "[too_few_examples]" in dspy_rejected([ex(1), "", ex(2)], min_examples=3)


def test_the_dspy_categories_are_reported_in_the_cookbook_words():
    message = dspy_rejected([{"answer": "a"}, {"question": "q"}, ex(3, context=5)])
    assert 'missing a non-empty "question" string [missing_question]' in message
    assert 'missing a non-empty "answer" string [missing_answer]' in message
    assert "context must be a string or a list of at most 50 strings [invalid_context]" in message


# ---- telling the formats apart ----
def test_dspy_is_a_format():
    assert "dspy" in FORMATS


@pytest.mark.parametrize("lines, fmt", [
    ([ex(1)], "dspy"),
    ([{"question": "q"}], "dspy"),
    ([{"answer": "a"}], "dspy"),
    (["", "{oops", ex(1), chat(("user", "q"), ("assistant", "a"))], "dspy"),
    ([{"question": "q", "messages": []}], "chat"),  # messages make it chat
    ([chat(("user", "q"), ("assistant", "a")), ex(2)], "chat"),
    ([pref(), ex(2)], "preference"),
    ([{"context": "c"}], "chat"),
])
def test_detect_format_tells_dspy_examples_apart(lines, fmt):
    assert detect_format(jsonl(lines)) == fmt


def test_check_jsonl_checks_a_dspy_file_as_dspy():
    assert check_jsonl(jsonl([ex(1), ex(2)]), min_examples=1, max_tokens=10).stats()["format"] == "dspy"
    with pytest.raises(ValidationError, match=r"^Invalid training file: .*\[missing_question\] on line\(s\) 2"):
        check_jsonl(jsonl([ex(1), chat(("user", "q"), ("assistant", "a"))]), min_examples=1, max_tokens=10)


# ---- question/answer pairs for the dspy method ----
def test_dspy_examples_of_a_dspy_file_list_context_and_line():
    lines = [ex(1), "", ex(2, context="one"), ex(3, context=["a", "b"], metadata={"k": "v"})]
    assert dspy_examples(jsonl(lines)) == [
        {"question": "Question 1?", "context": [], "answer": "Answer 1.", "line": 1},
        {"question": "Question 2?", "context": ["one"], "answer": "Answer 2.", "line": 3},
        {"question": "Question 3?", "context": ["a", "b"], "answer": "Answer 3.", "line": 4},
    ]


def test_dspy_examples_of_a_chat_file_take_the_last_user_message_before_the_last_assistant_message():
    lines = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}]},
        chat(("user", "first"), ("assistant", "one"), ("user", "second"), ("assistant", "two")),
        chat(("user", "ask"), ("assistant", "thinking"), ("assistant", "final")),
        chat(("user", "q"), ("assistant", "a"), ("user", "left unanswered")),
    ]
    got = dspy_examples(b"\xef\xbb\xbf" + jsonl(lines) + b"\r\n\r\n")
    assert [(e["question"], e["answer"], e["context"], e["line"]) for e in got] == [
        ("Hi?", "Hello.", [], 1), ("second", "two", [], 2), ("ask", "final", [], 3), ("q", "a", [], 4)]


def test_chat_lines_without_a_question_before_the_answer_are_refused_with_every_line():
    lines = [
        chat(("user", "q"), ("assistant", "a")),
        chat(("system", "s"), ("assistant", "a")),  # no user message
        chat(("user", "q"), ("assistant", "a")),
        chat(("assistant", "a"), ("user", "q")),  # the user message comes after the answer
        {"messages": [{"role": "user", "content": "q"},
                      {"role": "assistant", "tool_calls": [{"id": "1"}]}]},  # the answer is not text
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},  # empty question
    ]
    err = examples_rejected(lines)
    assert err.message.startswith("Invalid training file for the dspy method: ")
    assert "[no_question] on line(s) 2, 4, 5, 6 (line 2: no user message before message 1" in err.message


def test_no_question_lists_ten_lines_then_a_count():
    err = examples_rejected([chat(("assistant", "a"))] * 13)
    assert "[no_question] on line(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 3 more" in err.message


def test_a_preference_file_is_refused_for_the_dspy_method():
    err = examples_rejected([pref(), pref()])
    assert "chat" in err.message and "DSPy example" in err.message and "preference" in err.message


def test_dspy_examples_refuse_a_line_the_check_would_have_refused():
    err = examples_rejected([ex(1), {"question": "q"}, "[1]"])
    assert "[missing_answer] on line(s) 2" in err.message and "[data_type] on line(s) 3" in err.message


# ---- method.dspy options ----
DEFAULTS = {"optimizer": "bootstrap_few_shot", "metric": "contains", "judge_model": None, "auto": None,
            "max_bootstrapped_demos": 4, "max_labeled_demos": 4, "num_candidate_programs": None, "num_trials": None,
            "seed": None, "time_budget_s": None, "max_tokens": 128}


def options_refused(raw, param_key: str) -> str:
    with pytest.raises(ValidationError) as e:
        DspyOptions.from_dict(raw)
    assert e.value.status == 400 and e.value.param == f"{P}.{param_key}"
    return e.value.message


def test_dspy_defaults_resolve_every_key_in_the_recorded_order():
    resolved = DspyOptions().resolve(10)
    assert resolved == DEFAULTS
    assert tuple(resolved) == RESOLVED_KEYS["dspy"]
    assert DspyOptions.from_dict(None).resolve(10) == DspyOptions.from_dict({}).resolve(10) == DEFAULTS
    assert DspyOptions.allowed_keys() == RESOLVED_KEYS["dspy"]
    assert DspyOptions().param("metric") == "method.dspy.metric"


@pytest.mark.parametrize("raw, changes", [
    ({"optimizer": "bootstrap_few_shot_with_random_search"},
     {"optimizer": "bootstrap_few_shot_with_random_search", "num_candidate_programs": 4}),
    ({"optimizer": "bootstrap_few_shot_with_random_search", "num_candidate_programs": 9},
     {"optimizer": "bootstrap_few_shot_with_random_search", "num_candidate_programs": 9}),
    ({"optimizer": "mipro_v2"}, {"optimizer": "mipro_v2", "auto": "light"}),
    ({"optimizer": "mipro_v2", "auto": "heavy"}, {"optimizer": "mipro_v2", "auto": "heavy"}),
    ({"optimizer": "mipro_v2", "auto": None, "num_candidate_programs": 6, "num_trials": 20},
     {"optimizer": "mipro_v2", "num_candidate_programs": 6, "num_trials": 20}),
    ({"optimizer": "gepa"}, {"optimizer": "gepa", "auto": "light"}),
    ({"optimizer": "gepa", "auto": "medium"}, {"optimizer": "gepa", "auto": "medium"}),
    ({"metric": "llm_judge", "judge_model": "gpt-4o-mini"}, {"metric": "llm_judge", "judge_model": "gpt-4o-mini"}),
    ({"metric": "semantic_f1"}, {"metric": "semantic_f1"}),
    ({"metric": "semantic_f1", "judge_model": "ft:local:x"}, {"metric": "semantic_f1", "judge_model": "ft:local:x"}),
    ({"seed": 0, "time_budget_s": 10, "max_tokens": 16.0, "max_labeled_demos": 0, "max_bootstrapped_demos": 16},
     {"seed": 0, "time_budget_s": 10, "max_tokens": 16, "max_labeled_demos": 0, "max_bootstrapped_demos": 16}),
    ({"seed": 2**31 - 1, "time_budget_s": 86400, "max_tokens": 1024},
     {"seed": 2**31 - 1, "time_budget_s": 86400, "max_tokens": 1024}),
])
def test_dspy_options_resolve_with_their_optimizer_defaults(raw, changes):
    resolved = DspyOptions.from_dict(raw).resolve(10)
    assert resolved == {**DEFAULTS, **changes}
    assert tuple(resolved) == RESOLVED_KEYS["dspy"]


@pytest.mark.parametrize("key, value, extra", [
    ("max_bootstrapped_demos", -1, {}), ("max_bootstrapped_demos", 17, {}),
    ("max_labeled_demos", -1, {}), ("max_labeled_demos", 17, {}),
    ("num_candidate_programs", 0, {"optimizer": "bootstrap_few_shot_with_random_search"}),
    ("num_candidate_programs", 33, {"optimizer": "bootstrap_few_shot_with_random_search"}),
    ("num_trials", 0, {"optimizer": "mipro_v2", "num_candidate_programs": 4}),
    ("num_trials", 201, {"optimizer": "mipro_v2", "num_candidate_programs": 4}),
    ("seed", -1, {}), ("seed", 2**31, {}),
    ("time_budget_s", 9, {}), ("time_budget_s", 86401, {}),
    ("max_tokens", 15, {}), ("max_tokens", 1025, {}),
    ("max_tokens", 2.5, {}), ("max_tokens", "128", {}),
])
def test_each_numeric_dspy_option_is_bounded(key, value, extra):
    message = options_refused({key: value, **extra}, key)
    assert message.startswith(f"{key} must be an integer between ")


@pytest.mark.parametrize("key", ["max_bootstrapped_demos", "max_labeled_demos", "seed", "time_budget_s",
                                 "max_tokens"])
def test_a_bool_is_not_an_integer_option(key):
    assert "must be an integer" in options_refused({key: True}, key)


def test_an_unknown_optimizer_is_refused_naming_the_four():
    message = options_refused({"optimizer": "copro"}, "optimizer")
    assert message == ('optimizer must be one of "bootstrap_few_shot", "bootstrap_few_shot_with_random_search", '
                       '"mipro_v2", "gepa", got \'copro\'')


def test_an_unknown_metric_is_refused_naming_the_five():
    message = options_refused({"metric": "bleu"}, "metric")
    assert message == ('metric must be one of "exact_match", "contains", "f1", "semantic_f1", "llm_judge", '
                       "got 'bleu'")


def test_an_unknown_auto_is_refused():
    assert options_refused({"optimizer": "gepa", "auto": "max"}, "auto").startswith(
        'auto must be one of "light", "medium", "heavy" or null')


def test_llm_judge_needs_a_judge_model():
    assert "required" in options_refused({"metric": "llm_judge"}, "judge_model")


@pytest.mark.parametrize("metric", ["exact_match", "contains", "f1"])
def test_a_judge_model_is_refused_with_a_metric_that_does_not_use_it(metric):
    assert "only used by metric" in options_refused({"metric": metric, "judge_model": "gpt-4o"}, "judge_model")


@pytest.mark.parametrize("value", ["", "   ", "x" * 257, "gpt\0", 5, ["gpt-4o"]])
def test_a_judge_model_must_be_a_short_model_id(value):
    message = options_refused({"metric": "llm_judge", "judge_model": value}, "judge_model")
    assert len(message) < 200


@pytest.mark.parametrize("optimizer", ["bootstrap_few_shot", "bootstrap_few_shot_with_random_search"])
def test_auto_is_refused_with_a_bootstrap_optimizer(optimizer):
    assert "auto is only used by optimizer" in options_refused({"optimizer": optimizer, "auto": "light"}, "auto")


@pytest.mark.parametrize("raw, key", [
    ({"num_trials": 10}, "num_trials"),
    ({"optimizer": "gepa", "num_trials": 10}, "num_trials"),
    ({"optimizer": "bootstrap_few_shot_with_random_search", "num_trials": 10}, "num_trials"),
    ({"num_candidate_programs": 4}, "num_candidate_programs"),
    ({"optimizer": "gepa", "num_candidate_programs": 4}, "num_candidate_programs"),
])
def test_search_sizes_are_refused_for_optimizers_that_do_not_use_them(raw, key):
    assert "only used by optimizer" in options_refused(raw, key)


def test_mipro_v2_takes_auto_or_both_search_sizes_not_both():
    message = options_refused({"optimizer": "mipro_v2", "auto": "light", "num_trials": 10}, "num_trials")
    assert "give auto, or num_candidate_programs and num_trials, not both" in message
    options_refused({"optimizer": "mipro_v2", "auto": "medium", "num_candidate_programs": 4},
                    "num_candidate_programs")


def test_mipro_v2_without_auto_needs_both_search_sizes_and_names_the_missing_one():
    assert "num_trials is missing" in options_refused(
        {"optimizer": "mipro_v2", "num_candidate_programs": 4}, "num_trials")
    assert "num_candidate_programs is missing" in options_refused(
        {"optimizer": "mipro_v2", "auto": None, "num_trials": 30}, "num_candidate_programs")


def test_an_unknown_dspy_option_is_refused_listing_the_allowed_keys():
    message = options_refused({"zeta": 1, "metric": "f1", "alpha": 2}, "alpha")
    assert "alpha, 'zeta'" in message or "'alpha', 'zeta'" in message
    assert "allowed: " + ", ".join(RESOLVED_KEYS["dspy"]) in message


def test_a_non_nullable_dspy_option_may_not_be_null():
    assert "may not be null" in options_refused({"max_tokens": None}, "max_tokens")


def test_dspy_options_must_be_an_object():
    with pytest.raises(ValidationError) as e:
        DspyOptions.from_dict(["mipro_v2"])
    assert e.value.param == P


def test_dspy_options_are_frozen_and_compare_by_value():
    opts = DspyOptions(max_tokens=64.0)
    assert opts.max_tokens == 64 and opts == DspyOptions(max_tokens=64, param_prefix="elsewhere")
    with pytest.raises(AttributeError):
        opts.metric = "f1"  # type: ignore[misc]


# ---- the dspy method in parse_method ----
def test_parse_method_takes_dspy_with_its_options_directly_under_method_dspy():
    mtype, opts = parse_method({"type": "dspy", "dspy": {"optimizer": "mipro_v2", "metric": "f1"}}, None)
    assert mtype == "dspy" and isinstance(opts, DspyOptions)
    assert opts.resolve(20) == {**DEFAULTS, "optimizer": "mipro_v2", "metric": "f1", "auto": "light"}
    assert parse_method({"type": "dspy"}, None)[1].resolve(5) == DEFAULTS
    assert parse_method({"type": "dspy", "dspy": None, "supervised": None}, None)[1].resolve(5) == DEFAULTS


def test_parse_method_reports_dspy_option_errors_under_method_dspy():
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "dspy", "dspy": {"max_tokens": 5}}, None)
    assert e.value.param == "method.dspy.max_tokens"
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "dspy", "dspy": "fast"}, None)
    assert e.value.param == "method.dspy"


def test_parse_method_refuses_hyperparameters_under_method_dspy():
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "dspy", "dspy": {"hyperparameters": {"n_epochs": 2}}}, None)
    assert e.value.param == "method.dspy.hyperparameters"
    assert "unknown option(s) in method.dspy" in e.value.message


def test_parse_method_refuses_legacy_hyperparameters_with_dspy():
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "dspy"}, {"n_epochs": 3})
    assert e.value.param == "hyperparameters" and "method.dspy" in e.value.message


def test_parse_method_refuses_another_methods_settings_beside_dspy():
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "dspy", "supervised": {"hyperparameters": {}}}, None)
    assert e.value.param == "method.supervised"
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "supervised", "dspy": {"metric": "f1"}}, None)
    assert e.value.param == "method.dspy"


def test_a_bad_method_type_lists_the_three_methods_and_reinforcement_stays_unsupported():
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "magic"}, None)
    assert e.value.message == 'method.type must be one of "supervised", "dpo", "dspy"; got \'magic\''
    with pytest.raises(ValidationError) as e:
        parse_method({"type": "reinforcement"}, None)
    assert e.value.code == "unsupported_method"
