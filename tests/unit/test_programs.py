"""The tutor program (eventlog/programs.py): the gate on its saved DSPy state, the prompt chat sends for it, the
adapter that reads small models' answers, and the filter that streams the answer field only. No I/O: dspy is
imported (offline) and never calls a model here."""
import json

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from domain.errors import ValidationError
from eventlog import programs
from eventlog.generation import Generation
from eventlog.programs import (
    MAX_DEMOS,
    MAX_INSTRUCTIONS,
    MAX_STATE_BYTES,
    AnswerFilter,
    check_state,
    render,
    state_bytes,
)
from tests.helpers import program_state

R = "program.respond"
DEMOS = [{"question": "What is 2 + 2?", "context": ["Sums add numbers."], "answer": "It is 4."},
         {"question": "Who wrote Hamlet?", "context": ["Plays of England."], "answer": "Shakespeare did."}]


def refused(raw) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        check_state(raw)
    assert e.value.status == 400 and e.value.code == "invalid_program"
    return e.value


def with_respond(**changes) -> dict:
    state = program_state(demos=[dict(d) for d in DEMOS])
    state["respond"].update(changes)
    return state


def with_demo(demo: dict) -> dict:
    return program_state(demos=[demo])


# ---- check_state: the gate ---------------------------------------------------------------------------------
def test_a_valid_state_passes_normalized_without_scratch_lm_or_metadata():
    state = program_state(demos=[dict(d) for d in DEMOS])
    state["respond"]["demos"][0]["augmented"] = True
    checked = check_state(state)
    assert set(checked) == {"respond"}  # metadata dropped
    respond = checked["respond"]
    assert respond["traces"] == [] and respond["train"] == [] and respond["lm"] is None
    assert respond["signature"] == state["respond"]["signature"]
    assert respond["demos"] == [{**DEMOS[0], "augmented": True}, DEMOS[1]]


def test_a_state_read_from_bytes_is_the_same_as_from_the_object():
    state = program_state(demos=[dict(d) for d in DEMOS])
    assert check_state(json.dumps(state).encode()) == check_state(state)


def test_a_checked_state_passes_the_gate_again_unchanged():
    checked = check_state(program_state(demos=[dict(d) for d in DEMOS]))
    assert check_state(state_bytes(checked)) == checked


def test_a_demo_context_given_as_one_text_becomes_a_list():
    checked = check_state(with_demo({"question": "q?", "context": "one passage", "answer": "a."}))
    assert checked["respond"]["demos"][0]["context"] == ["one passage"]


def test_missing_traces_train_and_demos_are_filled_in_empty():
    state = program_state()
    for key in ("traces", "train", "demos", "lm"):
        del state["respond"][key]
    respond = check_state(state)["respond"]
    assert (respond["traces"], respond["train"], respond["demos"], respond["lm"]) == ([], [], [], None)


def test_an_unknown_top_level_key_is_refused():
    state = program_state()
    state["extra"] = 1
    assert refused(state).param == "program.extra"


def test_an_unknown_metadata_key_is_refused():
    state = program_state()
    state["metadata"]["who"] = "me"
    assert refused(state).param == "program.metadata.who"


def test_a_state_without_the_respond_predictor_is_refused():
    state = program_state()
    del state["respond"]
    assert refused(state).param == R


def test_an_unknown_key_in_respond_is_refused():
    assert refused(with_respond(code="import os")).param == f"{R}.code"


@pytest.mark.parametrize("key", ["traces", "train"])
def test_optimizer_scratch_that_is_not_empty_is_refused(key):
    err = refused(with_respond(**{key: [{"question": "q", "answer": "a"}]}))
    assert err.param == f"{R}.{key}" and "must be empty" in err.message


def test_an_lm_configuration_in_the_state_is_refused():
    err = refused(with_respond(lm={"model": "openai/gpt-4o", "api_key": "sk-x"}))
    assert err.param == f"{R}.lm" and "must be null" in err.message


def test_an_unknown_key_in_the_signature_is_refused():
    state = program_state()
    state["respond"]["signature"]["temperature"] = 1
    assert refused(state).param == f"{R}.signature.temperature"


@pytest.mark.parametrize("n", [2, 4])
def test_a_signature_without_exactly_the_three_tutor_fields_is_refused(n):
    state = program_state()
    fields = state["respond"]["signature"]["fields"]
    state["respond"]["signature"]["fields"] = (fields + [{"prefix": "Reasoning:", "description": ""}])[:n]
    assert refused(state).param == f"{R}.signature.fields"


def test_fields_in_another_order_are_refused_at_the_first_misplaced_prefix():
    state = program_state()
    fields = state["respond"]["signature"]["fields"]
    fields[0], fields[1] = fields[1], fields[0]  # Question first
    err = refused(state)
    assert err.param == f"{R}.signature.fields[0].prefix" and "'Context:'" in err.message


def test_an_unknown_key_in_a_field_is_refused():
    state = program_state()
    state["respond"]["signature"]["fields"][2]["type"] = "str"
    assert refused(state).param == f"{R}.signature.fields[2].type"


def test_a_demo_with_an_unknown_key_is_refused():
    assert refused(with_demo({"question": "q?", "answer": "a.", "rationale": "r"})).param == f"{R}.demos[0].rationale"


def test_a_demo_without_an_answer_is_refused():
    assert refused(with_demo({"question": "q?", "context": []})).param == f"{R}.demos[0]"


def test_a_demo_with_an_empty_answer_is_refused():
    assert refused(with_demo({"question": "q?", "answer": "  "})).param == f"{R}.demos[0].answer"


@pytest.mark.parametrize("context", [[1, 2], [["nested"]], {"a": "b"}, 3])
def test_a_demo_whose_context_is_not_a_list_of_texts_is_refused(context):
    assert refused(with_demo({"question": "q?", "context": context, "answer": "a."})).param == \
        f"{R}.demos[0].context"


def test_a_demo_whose_augmented_flag_is_not_a_bool_is_refused():
    assert refused(with_demo({"question": "q?", "answer": "a.", "augmented": "yes"})).param == \
        f"{R}.demos[0].augmented"


def test_more_than_max_demos_is_refused():
    demos = [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(MAX_DEMOS + 1)]
    assert refused(program_state(demos=demos)).param == f"{R}.demos"
    assert len(check_state(program_state(demos=demos[:MAX_DEMOS]))["respond"]["demos"]) == MAX_DEMOS


def test_instructions_over_the_limit_are_refused():
    assert check_state(program_state(instructions="x" * MAX_INSTRUCTIONS))
    err = refused(program_state(instructions="x" * (MAX_INSTRUCTIONS + 1)))
    assert err.param == f"{R}.signature.instructions" and str(MAX_INSTRUCTIONS) in err.message


@pytest.mark.parametrize("instructions", ["", "   ", None, 7])
def test_instructions_that_are_not_non_empty_text_are_refused(instructions):
    assert refused(program_state(instructions=instructions)).param == f"{R}.signature.instructions"


def test_bytes_over_the_limit_are_refused_before_parsing():
    err = refused(b" " * (MAX_STATE_BYTES + 1))
    assert err.param == "program" and str(MAX_STATE_BYTES) in err.message


def test_an_object_over_the_limit_is_refused():
    demos = [{"question": "q?", "answer": "a" * 10_000} for _ in range(MAX_STATE_BYTES // 10_000 + 1)]
    err = refused(program_state(demos=demos))
    assert err.param == "program" and str(MAX_STATE_BYTES) in err.message


@pytest.mark.parametrize("raw", [b"not json", b"{\"respond\": ", b"\xff\xfe\x00garbage", b"[" * 100_000])
def test_bytes_that_are_not_json_are_refused(raw):
    err = refused(raw)
    assert err.param == "program" and "not JSON" in err.message


@pytest.mark.parametrize("raw", [b"[]", b"[{\"respond\": {}}]", b"\"text\"", b"null"])
def test_json_that_is_not_an_object_is_refused(raw):
    err = refused(raw)
    assert err.param == "program" and "JSON object" in err.message


# ---- state_bytes --------------------------------------------------------------------------------------------
def test_state_bytes_are_the_same_for_the_same_state():
    state = check_state(program_state(demos=[dict(d) for d in DEMOS]))
    assert state_bytes(state) == state_bytes(json.loads(json.dumps(state)))


def test_state_bytes_do_not_depend_on_key_order():
    state = check_state(program_state(demos=[dict(d) for d in DEMOS]))
    reordered = json.loads(json.dumps(state), object_pairs_hook=lambda pairs: dict(reversed(pairs)))
    assert list(reordered["respond"]) != list(state["respond"])
    assert state_bytes(reordered) == state_bytes(state)


def test_state_bytes_are_utf8_json_of_the_state():
    state = check_state(program_state(instructions="Réponds à l'élève. 答えて"))
    data = state_bytes(state)
    assert "Réponds à l'élève. 答えて".encode() in data
    assert json.loads(data) == state


# ---- render: the prompt chat sends ----------------------------------------------------------------------------
def rendered(extra_system: str = "", instructions: str = "Answer like a patient tutor.") -> list[dict[str, str]]:
    state = check_state(program_state(demos=[dict(d) for d in DEMOS], instructions=instructions))
    return render(state, "What is the capital of France?", ["Paris is in France.", "Lyon is a city."], extra_system)


def test_render_returns_chat_messages_with_the_system_message_first():
    messages = rendered()
    assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages)
    assert messages[0]["role"] == "system"
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * len(DEMOS) + ["user"]


def test_the_system_message_holds_the_programs_instructions():
    assert "Answer like a patient tutor." in rendered()[0]["content"]


def test_each_demo_is_a_user_question_and_an_assistant_answer_in_order():
    messages = rendered()[1:-1]
    for i, demo in enumerate(DEMOS):
        user, assistant = messages[2 * i], messages[2 * i + 1]
        assert demo["question"] in user["content"] and demo["context"][0] in user["content"]
        assert demo["answer"] in assistant["content"]
        assert demo["answer"] not in user["content"]


def test_the_last_user_message_holds_the_question_and_each_passage():
    last = rendered()[-1]
    assert last["role"] == "user"
    for text in ("What is the capital of France?", "Paris is in France.", "Lyon is a city."):
        assert text in last["content"]


def test_extra_system_is_appended_to_the_system_message():
    plain, extra = rendered()[0]["content"], rendered("Answer in French.")[0]["content"]
    assert extra == plain + "\n\nAnswer in French."
    assert rendered("Answer in French.")[1:] == rendered()[1:]


def test_render_follows_the_state_it_is_given():
    first = rendered(instructions="First program's instructions.")[0]["content"]
    second = rendered(instructions="Second program's instructions.")[0]["content"]
    assert "First program's instructions." in first and "First program's instructions." not in second
    assert "Second program's instructions." in second


def test_a_program_without_demos_renders_system_and_question_only():
    state = check_state(program_state())
    messages = render(state, "Why is the sky blue?", [])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Why is the sky blue?" in messages[1]["content"]


# ---- the tolerant adapter -------------------------------------------------------------------------------------
class Verdict(dspy.Signature):
    """Is the answer correct?"""

    answer: str = dspy.InputField()
    correct: bool = dspy.OutputField()


class Graded(dspy.Signature):
    """Answer and grade."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
    score: int = dspy.OutputField()


@pytest.fixture(scope="module")
def adapter():
    return programs.classes()[2]()


@pytest.fixture(scope="module")
def tutor():
    return programs.classes()[0]


def test_a_bare_completion_is_read_as_the_answer(adapter, tutor):
    assert adapter.parse(tutor, "Paris is the capital.") == {"answer": "Paris is the capital."}


def test_a_completion_with_dspy_markers_is_parsed_as_dspy_does(adapter, tutor):
    assert adapter.parse(tutor, "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]") == {"answer": "Paris"}


@pytest.mark.parametrize("completion, expected", [("Yes, it is right.", True), ("no", False),
                                                  ("That is incorrect.", False), ("TRUE", True)])
def test_a_bool_output_is_looked_for_in_a_bare_completion(adapter, completion, expected):
    assert adapter.parse(Verdict, completion) == {"correct": expected}


@pytest.mark.parametrize("completion", ["", "   \n", "Perhaps, it depends."])
def test_a_completion_without_a_readable_value_raises_adapter_parse_error(adapter, completion):
    with pytest.raises(AdapterParseError):
        adapter.parse(Verdict, completion)


def test_an_empty_completion_for_the_tutor_raises_adapter_parse_error(adapter, tutor):
    with pytest.raises(AdapterParseError):
        adapter.parse(tutor, "")


def test_several_outputs_are_read_from_name_value_lines(adapter):
    assert adapter.parse(Graded, "Answer: Paris\nscore = 4 of 5") == {"answer": "Paris", "score": 4}
    with pytest.raises(AdapterParseError):
        adapter.parse(Graded, "Paris, I think; 4 of 5")


def test_the_adapter_does_not_fall_back_to_the_json_adapter():
    assert programs.classes()[2]().use_json_adapter_fallback is False


# ---- AnswerFilter: the streamed answer field ----------------------------------------------------------------
def stream(pieces, result=None, count_tokens=None) -> tuple[list[str], AnswerFilter, list[int]]:
    closed: list[int] = []
    f = AnswerFilter(pieces, lambda: closed.append(1), result=result, count_tokens=count_tokens)
    return list(f), f, closed


MARKED = ["[[ ## ans", "wer ## ]]\n", "Paris is", " the capital", ".\n\n[[ ## comp", "leted ## ]]", "junk"]


def test_only_the_answer_field_is_streamed_and_generation_stops_at_the_end_marker():
    pieces = iter(MARKED)
    out, f, closed = stream(pieces)
    assert "".join(out) == f.text == "Paris is the capital."
    assert closed == [1]
    assert list(pieces) == ["junk"]  # nothing read after the end marker


def test_the_answer_streams_piece_by_piece_before_the_end():
    out, _, _ = stream(MARKED)
    assert len(out) > 1 and out[0] == "Paris is"


def test_a_completion_without_markers_passes_through_whole():
    out, f, closed = stream(["Paris ", "is it.", "  "])
    assert "".join(out) == f.text == "Paris is it."
    assert closed == []


def test_a_citation_in_brackets_is_not_mistaken_for_a_marker():
    out, f, _ = stream(["[1] says", " hi"])
    assert "".join(out) == f.text == "[1] says hi"
    assert out[0] == "[1] says"  # streamed at once, not held to the end


def test_a_marker_split_inside_its_brackets_is_still_found():
    out, f, closed = stream(["[", "[ ## answer ## ]]\nParis.\n\n[", "[ ## completed ## ]]"])
    assert f.text == "Paris." and closed == [1]
    assert "".join(out) == "Paris."


def test_an_empty_completion_streams_nothing():
    out, f, _ = stream([])
    assert out == [] and f.text == ""


def test_the_result_gets_the_answer_and_tokens_counted_when_cut_short():
    result = Generation()
    out, f, _ = stream(MARKED, result=result)
    assert result.text == f.text == "Paris is the capital."
    assert result.completion_tokens > 0 and result.finish_reason == "stop"


def test_the_tokens_are_counted_with_the_counter_when_there_is_one():
    calls = []

    def count_tokens(text):
        calls.append(text)
        return 7

    result = Generation()
    stream(MARKED, result=result, count_tokens=count_tokens)
    assert result.completion_tokens == 7
    assert calls == ["".join(MARKED[:-1])]  # what was generated, up to the end marker


def test_a_result_with_tokens_already_counted_keeps_them():
    result = Generation(completion_tokens=42, finish_reason="length")
    stream(["Paris ", "is it."], result=result)
    assert (result.text, result.completion_tokens, result.finish_reason) == ("Paris is it.", 42, "length")


def test_closing_the_filter_closes_the_generation():
    closed = []
    AnswerFilter(iter(["x"]), lambda: closed.append(1)).close()
    assert closed == [1]
