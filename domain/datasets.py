"""Chat fine-tuning data checks, with the OpenAI cookbook's error categories and line numbers."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.errors import ValidationError

ROLES = {"system", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id"}
EXAMPLE_KEYS = {"messages", "tools", "functions", "parallel_tool_calls", "metadata"}

# category -> human text, in the cookbook's words
CATEGORIES = {
    "invalid_json": "line is not valid JSON",
    "too_deep": "JSON nested too deeply",
    "data_type": "example is not a JSON object",
    "unrecognized_example_key": "unknown key(s) in example",
    "missing_messages_list": "missing a \"messages\" list",
    "message_missing_key": "message without \"role\" or \"content\"",
    "message_unrecognized_key": "unknown key(s) in message",
    "unrecognized_role": "unknown role",
    "missing_content": "message content missing or not text",
    "invalid_weight": "weight must be 0 or 1 on assistant messages",
    "example_missing_assistant_message": "no assistant message",
    "too_long": "example is over the context length",
}


MAX_DETAIL = 200  # characters of a line's detail quoted in the error message


def _lines(text: str):
    """(line number, line) as editors count them: split on \\n only (str.splitlines also splits on
    U+2028, U+0085, form feeds..., which JSON strings may hold unescaped), with a trailing \\r dropped."""
    for lineno, raw in enumerate(text.split("\n"), start=1):
        yield lineno, raw[:-1] if raw.endswith("\r") else raw


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


@dataclass
class DatasetReport:
    n_examples: int = 0
    total_tokens: int = 0
    max_tokens: int = 0
    errors: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    details: dict[int, str] = field(default_factory=dict)

    def add(self, category: str, line: int, detail: str = "") -> None:
        self.errors[category].append(line)
        if detail and line not in self.details:
            # details quote the client's data: bounded, so a huge value cannot make a huge error message
            self.details[line] = detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."

    def stats(self) -> dict[str, Any]:
        return {"n_examples": self.n_examples, "total_tokens": self.total_tokens, "max_tokens": self.max_tokens}


def check_chat_jsonl(
    content: bytes,
    *,
    min_examples: int,
    max_tokens: int,
    count_tokens: Callable[[list[dict[str, Any]]], int] | None = None,
) -> DatasetReport:
    """Check every line; collect every problem (not only the first). Raises ValidationError if any."""
    report = DatasetReport()
    try:
        text = content.decode("utf-8-sig")  # a leading byte order mark is not part of the first line
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise ValidationError(f"Invalid file format: the file is not UTF-8 text (line {line}, byte {e.start})",
                              param="file", code="invalid_file_format") from e
    for lineno, raw in _lines(text):
        if not raw.strip():
            continue
        try:
            ex = json.loads(raw)
        except json.JSONDecodeError as e:
            report.add("invalid_json", lineno, e.msg)
            continue
        except RecursionError:  # the json module's nesting limit: a hostile line, not a server fault
            report.add("too_deep", lineno)
            continue
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            report.add("invalid_json", lineno, str(e))
            continue
        report.n_examples += 1
        if not isinstance(ex, dict):
            report.add("data_type", lineno)
            continue
        unknown = set(ex) - EXAMPLE_KEYS
        if unknown:
            report.add("unrecognized_example_key", lineno, ", ".join(sorted(unknown)))
        messages = ex.get("messages")
        if not isinstance(messages, list) or not messages:
            report.add("missing_messages_list", lineno)
            continue
        ok = True
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or ("content" not in m and "tool_calls" not in m
                                                               and "function_call" not in m):
                report.add("message_missing_key", lineno)
                ok = False
                continue
            bad = set(m) - MESSAGE_KEYS
            if bad:
                report.add("message_unrecognized_key", lineno, ", ".join(sorted(bad)))
                ok = False
            if not isinstance(m["role"], str) or m["role"] not in ROLES:  # a list or object is unhashable
                report.add("unrecognized_role", lineno, _short(m["role"]))
                ok = False
            c = m.get("content")
            if ("tool_calls" not in m and "function_call" not in m) and (not isinstance(c, str) or not c.strip()):
                report.add("missing_content", lineno)
                ok = False
            if "weight" in m and (m["role"] != "assistant" or m["weight"] not in (0, 1)):
                report.add("invalid_weight", lineno)
                ok = False
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            report.add("example_missing_assistant_message", lineno)
            ok = False
        if ok and count_tokens is not None:
            n = count_tokens(messages)
            report.total_tokens += n
            report.max_tokens = max(report.max_tokens, n)
            if n > max_tokens:
                report.add("too_long", lineno, f"{n} tokens > {max_tokens}")
    problems = []
    for category, lines in report.errors.items():
        shown = ", ".join(str(n) for n in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
        extra = ""
        first = report.details.get(lines[0])
        if first:
            extra = f" (line {lines[0]}: {first})"
        problems.append(f"{CATEGORIES[category]} [{category}] on line(s) {shown}{extra}")
    if report.n_examples < min_examples and not (report.errors.get("invalid_json") or report.errors.get("too_deep")):
        problems.append(f"the file has {report.n_examples} example(s); at least {min_examples} are required "
                        "[too_few_examples]")
    if problems:
        raise ValidationError("Invalid training file: " + "; ".join(problems), param="file",
                              code="invalid_file_format")
    return report
