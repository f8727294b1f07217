"""The dataset checks (chat and preference formats) name each problem with its category and line numbers."""
import json

import pytest

from domain.datasets import check_chat_jsonl, check_jsonl, check_preference_jsonl, detect_format
from domain.errors import ValidationError

SYSTEM = {"role": "system", "content": "You are a tutor."}


def good(i: int = 0) -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": f"Question {i}?"},
                         {"role": "assistant", "content": f"Answer {i}."}]}


def jsonl(lines: list) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()


def rejected(lines: list, **kw) -> str:
    with pytest.raises(ValidationError) as e:
        check_chat_jsonl(jsonl(lines), min_examples=kw.get("min_examples", 3), max_tokens=kw.get("max_tokens", 1000),
                         count_tokens=kw.get("count_tokens", lambda m: sum(len(x.get("content", "")) for x in m)))
    assert e.value.param == "file" and e.value.code == "invalid_file_format"
    return e.value.message


def test_a_valid_file_passes_and_reports_token_stats():
    report = check_chat_jsonl(jsonl([good(i) for i in range(5)]), min_examples=3, max_tokens=1000,
                              count_tokens=lambda m: 7)
    assert report.stats() == {"n_examples": 5, "total_tokens": 35, "max_tokens": 7, "format": "chat"}


@pytest.mark.parametrize("bad, category", [
    ("{not json", "invalid_json"),
    ({"prompt": "x", "completion": "y"}, "unrecognized_example_key"),
    ({"text": "x"}, "missing_messages_list"),
    ({"messages": [SYSTEM, {"role": "user"}, {"role": "assistant", "content": "a"}]}, "message_missing_key"),
    ({"messages": [{"role": "user", "content": "q", "mood": "x"}, {"role": "assistant", "content": "a"}]},
     "message_unrecognized_key"),
    ({"messages": [{"role": "teacher", "content": "q"}, {"role": "assistant", "content": "a"}]}, "unrecognized_role"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}, "missing_content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]}, "missing_content"),
    ({"messages": [SYSTEM, {"role": "user", "content": "q"}]}, "example_missing_assistant_message"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 2000}]}, "too_long"),
])
def test_each_category_is_reported_with_its_line_number(bad, category):
    message = rejected([good(1), good(2), bad, good(3)])
    assert f"[{category}] on line(s) 3" in message


def test_every_bad_line_is_listed_not_only_the_first():
    message = rejected([good(1), "oops", good(2), "{", good(3)])
    assert "[invalid_json] on line(s) 2, 4" in message


def test_too_few_examples():
    message = rejected([good(1), good(2)], min_examples=10)
    assert "at least 10 are required [too_few_examples]" in message


def test_non_utf8_is_rejected():
    with pytest.raises(ValidationError, match="not UTF-8"):
        check_chat_jsonl(b"\xff\xfe", min_examples=1, max_tokens=10)


# ---- OpenAI's preference (DPO) format ----
def pref(i: int = 0, **override) -> dict:
    ex = {"input": {"messages": [SYSTEM, {"role": "user", "content": f"Question {i}?"}]},
          "preferred_output": [{"role": "assistant", "content": f"A careful answer {i}."}],
          "non_preferred_output": [{"role": "assistant", "content": "Dunno."}]}
    ex.update(override)
    return ex


def count_chars(messages: list) -> int:
    return sum(len(m.get("content") or "") for m in messages)


def pref_rejected(lines: list, **kw) -> str:
    with pytest.raises(ValidationError) as e:
        check_preference_jsonl(jsonl(lines), min_examples=kw.get("min_examples", 3),
                               max_tokens=kw.get("max_tokens", 1000), count_tokens=count_chars)
    assert e.value.param == "file" and e.value.code == "invalid_file_format"
    return e.value.message


def test_a_valid_preference_file_passes_and_counts_the_input_with_the_longer_output():
    report = check_preference_jsonl(jsonl([pref(i) for i in range(4)]), min_examples=3, max_tokens=1000,
                                    count_tokens=count_chars)
    chosen = count_chars(pref(0)["input"]["messages"] + pref(0)["preferred_output"])
    rejected_ = count_chars(pref(0)["input"]["messages"] + pref(0)["non_preferred_output"])
    assert chosen > rejected_
    assert report.stats() == {"n_examples": 4, "total_tokens": 4 * (chosen + rejected_), "max_tokens": chosen,
                              "format": "preference"}


def test_preference_inputs_need_no_assistant_turn_and_may_end_with_any_role():
    lines = [pref(1), pref(2, input={"messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}],
                                     "tools": [], "parallel_tool_calls": False}),
             pref(3, preferred_output=[{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}])]
    assert check_preference_jsonl(jsonl(lines), min_examples=3, max_tokens=1000).n_examples == 3


@pytest.mark.parametrize("bad, category, detail", [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "data_type", None),
    (pref(0, extra=1), "unrecognized_example_key", "extra"),
    ({k: v for k, v in pref(0).items() if k != "input"}, "missing_input", None),
    (pref(0, input=["q"]), "missing_input", "got ['q']"),
    (pref(0, input={"messages": [{"role": "user", "content": "q"}], "temperature": 1}), "unrecognized_input_key",
     "temperature"),
    (pref(0, input={}), "missing_input_messages", None),
    (pref(0, input={"messages": []}), "missing_input_messages", None),
    (pref(0, input={"messages": [{"role": "user"}]}), "message_missing_key", None),
    (pref(0, input={"messages": [{"role": "teacher", "content": "q"}]}), "unrecognized_role", "'teacher'"),
    (pref(0, input={"messages": [{"role": "user", "content": "  "}]}), "missing_content", None),
    (pref(0, input={"messages": [{"role": "user", "content": "q", "weight": 1}]}), "message_unrecognized_key",
     "weight"),
    ({k: v for k, v in pref(0).items() if k != "preferred_output"}, "missing_preferred_output", None),
    (pref(0, preferred_output=[]), "missing_preferred_output", "got []"),
    (pref(0, preferred_output={"role": "assistant", "content": "a"}), "missing_preferred_output", "got {"),
    (pref(0, preferred_output=[{"role": "user", "content": "a"}]), "invalid_preferred_output",
     "item 0 has role 'user', not 'assistant'"),
    (pref(0, preferred_output=[{"role": "assistant", "content": ""}]), "invalid_preferred_output",
     "item 0 has no text content"),
    (pref(0, preferred_output=[{"role": "assistant", "content": "a"}, "b"]), "invalid_preferred_output",
     "item 1 is not a message object"),
    (pref(0, preferred_output=[{"role": "assistant", "content": "a", "weight": 1}]), "invalid_preferred_output",
     "item 0 has unknown key(s) weight"),
    ({k: v for k, v in pref(0).items() if k != "non_preferred_output"}, "missing_non_preferred_output", None),
    (pref(0, non_preferred_output=[{"role": "assistant", "content": 5}]), "invalid_non_preferred_output",
     "item 0 has no text content"),
    (pref(0, non_preferred_output=[{"role": "assistant", "content": "a" * 2000}]), "too_long",
     "2027 tokens > 1000"),  # the input with the longer output
])
def test_each_preference_category_is_reported_with_its_line_number(bad, category, detail):
    message = pref_rejected([pref(1), pref(2), bad, pref(3)])
    assert f"[{category}] on line(s) 3" in message
    if detail:
        assert f"(line 3: {detail}" in message


def test_every_bad_preference_line_is_listed_with_every_problem():
    no_input = {k: v for k, v in pref(0).items() if k != "input"}
    message = pref_rejected([pref(1), no_input, "", pref(2, preferred_output=[]), no_input, pref(3)])
    assert "[missing_input] on line(s) 2, 5" in message
    assert "[missing_preferred_output] on line(s) 4" in message


def test_preference_line_numbers_count_blank_lines_and_a_bom():
    content = b"\xef\xbb\xbf" + jsonl([pref(1), "", pref(2, input=None), pref(3)])
    with pytest.raises(ValidationError, match=r"\[missing_input\] on line\(s\) 3"):
        check_preference_jsonl(content, min_examples=1, max_tokens=1000)


def test_preference_details_are_bounded():
    message = pref_rejected([pref(1), pref(2), pref(0, preferred_output=[{"role": "x" * 5000, "content": "a"}])])
    assert len(message) < 600


def test_too_few_preference_pairs_and_non_utf8():
    assert "at least 10 are required [too_few_examples]" in pref_rejected([pref(1)], min_examples=10)
    with pytest.raises(ValidationError, match="not UTF-8"):
        check_preference_jsonl(b"\xff\xfe", min_examples=1, max_tokens=10)


def test_deeply_nested_preference_lines_are_a_category_not_a_crash():
    message = pref_rejected([pref(1), pref(2), "[" * 100_000 + "]" * 100_000], min_examples=1)
    assert "[too_deep] on line(s) 3" in message


# ---- telling the formats apart ----
@pytest.mark.parametrize("lines, fmt", [
    ([good(1)], "chat"),
    ([pref(1)], "preference"),
    (["", "  ", pref(1)], "preference"),
    (["{oops", "[1]", pref(1), good(2)], "preference"),  # the first line that is a JSON object decides
    ([good(1), pref(2)], "chat"),
    ([{"input": {"messages": []}}], "preference"),
    ([{"preferred_output": []}], "preference"),
    ([{"messages": [], "input": {}}], "chat"),
    ([{"prompt": "p", "completion": "c"}], "chat"),
    ([], "chat"),
    (["not json at all"], "chat"),
])
def test_detect_format(lines, fmt):
    assert detect_format(jsonl(lines)) == fmt
    assert detect_format(b"\xef\xbb\xbf" + jsonl(lines)) == fmt


def test_detect_format_survives_hostile_bytes():
    assert detect_format(b"\xff\xfe{") == "chat"
    assert detect_format(b"[" * 100_000) == "chat"


def test_check_jsonl_dispatches_on_the_format_and_says_which():
    assert check_jsonl(jsonl([good(1), good(2)]), min_examples=1, max_tokens=100).stats()["format"] == "chat"
    assert check_jsonl(jsonl([pref(1), pref(2)]), min_examples=1, max_tokens=100).stats()["format"] == "preference"
    with pytest.raises(ValidationError, match=r"\[missing_input\] on line\(s\) 2"):  # a chat line in a DPO file
        check_jsonl(jsonl([pref(1), good(2)]), min_examples=1, max_tokens=100)
    with pytest.raises(ValidationError, match=r"\[missing_messages_list\] on line\(s\) 2"):
        check_jsonl(jsonl([good(1), pref(2)]), min_examples=1, max_tokens=100)


def test_each_category_quotes_its_own_detail_when_a_line_has_several_problems():
    bad = {"input": {"messages": [{"role": "user", "content": "q"}], "mood": 1},
           "preferred_output": [{"role": "user", "content": "a"}], "non_preferred_output": "no"}
    message = pref_rejected([pref(1), bad], min_examples=1)
    assert "[unrecognized_input_key] on line(s) 2 (line 2: mood)" in message
    assert "[invalid_preferred_output] on line(s) 2 (line 2: item 0 has role 'user', not 'assistant')" in message
    assert "[missing_non_preferred_output] on line(s) 2 (line 2: got 'no')" in message
