"""The chat dataset checks name each problem with its category and line numbers."""
import json

import pytest

from domain.datasets import check_chat_jsonl
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
    assert report.stats() == {"n_examples": 5, "total_tokens": 35, "max_tokens": 7}


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
