"""Fine-tuning data checks, with the OpenAI cookbook's error categories and line numbers.

Two of OpenAI's JSONL formats: chat (`{"messages": [...]}`, for supervised fine-tuning) and preference
(`{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`, for DPO), and
tunelog's DSPy examples (`{"question": ..., "answer": ..., "context": ..., "metadata": {...}}`, for the dspy
method). `check_jsonl` tells them apart by the first example and checks the file as that format;
`dspy_examples` reads the question/answer pairs of a checked chat or DSPy file.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from domain.errors import ValidationError

ROLES = {"system", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id"}
EXAMPLE_KEYS = {"messages", "tools", "functions", "parallel_tool_calls", "metadata"}
PREFERENCE_KEYS = {"input", "preferred_output", "non_preferred_output"}
INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
OUTPUT_MESSAGE_KEYS = {"role", "content", "name"}
DSPY_KEYS = {"question", "answer", "context", "metadata"}
MAX_DSPY_CONTEXT = 50  # strings in a DSPy example's context list
FORMATS = ("chat", "preference", "dspy")

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
    # the preference (DPO) format
    "missing_input": "missing an \"input\" object",
    "unrecognized_input_key": "unknown key(s) in input",
    "missing_input_messages": "missing an \"input.messages\" list",
    "missing_preferred_output": "missing a \"preferred_output\" list of assistant messages",
    "invalid_preferred_output": "preferred_output must hold assistant messages with text content",
    "missing_non_preferred_output": "missing a \"non_preferred_output\" list of assistant messages",
    "invalid_non_preferred_output": "non_preferred_output must hold assistant messages with text content",
    # the DSPy example format
    "missing_question": "missing a non-empty \"question\" string",
    "missing_answer": "missing a non-empty \"answer\" string",
    "invalid_context": f"context must be a string or a list of at most {MAX_DSPY_CONTEXT} strings",
    # a chat file read for the dspy method (dspy_examples)
    "no_question": "the last assistant message must have text and follow a user message with text",
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
    details: dict[tuple[str, int], str] = field(default_factory=dict)  # (category, line): the first detail
    format: str = "chat"  # "chat" | "preference" | "dspy"

    def add(self, category: str, line: int, detail: str = "") -> None:
        self.errors[category].append(line)
        if detail and (category, line) not in self.details:
            # details quote the client's data: bounded, so a huge value cannot make a huge error message
            self.details[category, line] = detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."

    def stats(self) -> dict[str, Any]:
        return {"n_examples": self.n_examples, "total_tokens": self.total_tokens, "max_tokens": self.max_tokens,
                "format": self.format}


CountTokens = Callable[[list[dict[str, Any]]], int]


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")  # a leading byte order mark is not part of the first line
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise ValidationError(f"Invalid file format: the file is not UTF-8 text (line {line}, byte {e.start})",
                              param="file", code="invalid_file_format") from e


def _parse(raw: str) -> tuple[Any, str | None, str]:
    """(value, error category, detail) of one line."""
    try:
        return json.loads(raw), None, ""
    except json.JSONDecodeError as e:
        return None, "invalid_json", e.msg
    except RecursionError:  # the json module's nesting limit: a hostile line, not a server fault
        return None, "too_deep", ""
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        return None, "invalid_json", str(e)


def _objects(text: str, report: DatasetReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, example object) of every non-blank line that is one; the others are reported."""
    for lineno, raw in _lines(text):
        if not raw.strip():
            continue
        ex, category, detail = _parse(raw)
        if category:
            report.add(category, lineno, detail)
            continue
        report.n_examples += 1
        if not isinstance(ex, dict):
            report.add("data_type", lineno)
            continue
        yield lineno, ex


def _check_messages(messages: list[Any], lineno: int, report: DatasetReport,
                    keys: set[str] = MESSAGE_KEYS) -> bool:
    """Each message of a conversation (chat's `messages`, preference's `input.messages`)."""
    ok = True
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and "tool_calls" not in m
                                                           and "function_call" not in m):
            report.add("message_missing_key", lineno)
            ok = False
            continue
        bad = set(m) - keys
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
    return ok


def _count(report: DatasetReport, lineno: int, n: int, max_tokens: int, total: int | None = None) -> None:
    report.total_tokens += n if total is None else total
    report.max_tokens = max(report.max_tokens, n)
    if n > max_tokens:
        report.add("too_long", lineno, f"{n} tokens > {max_tokens}")


def _problems(report: DatasetReport) -> list[str]:
    """One bounded text per category: its words, its name, its first 10 line numbers, its first line's detail."""
    problems = []
    for category, lines in report.errors.items():
        shown = ", ".join(str(n) for n in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
        extra = ""
        first = report.details.get((category, lines[0]))
        if first:
            extra = f" (line {lines[0]}: {first})"
        problems.append(f"{CATEGORIES[category]} [{category}] on line(s) {shown}{extra}")
    return problems


def _raise_if_any(report: DatasetReport, min_examples: int) -> DatasetReport:
    problems = _problems(report)
    if report.n_examples < min_examples and not (report.errors.get("invalid_json") or report.errors.get("too_deep")):
        problems.append(f"the file has {report.n_examples} example(s); at least {min_examples} are required "
                        "[too_few_examples]")
    if problems:
        raise ValidationError("Invalid training file: " + "; ".join(problems), param="file",
                              code="invalid_file_format")
    return report


def check_chat_jsonl(
    content: bytes,
    *,
    min_examples: int,
    max_tokens: int,
    count_tokens: CountTokens | None = None,
) -> DatasetReport:
    """Check every line; collect every problem (not only the first). Raises ValidationError if any."""
    report = DatasetReport(format="chat")
    for lineno, ex in _objects(_decode(content), report):
        unknown = set(ex) - EXAMPLE_KEYS
        if unknown:
            report.add("unrecognized_example_key", lineno, ", ".join(sorted(unknown)))
        messages = ex.get("messages")
        if not isinstance(messages, list) or not messages:
            report.add("missing_messages_list", lineno)
            continue
        ok = _check_messages(messages, lineno, report)
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
            report.add("example_missing_assistant_message", lineno)
            ok = False
        if ok and count_tokens is not None:
            _count(report, lineno, count_tokens(messages), max_tokens)
    return _raise_if_any(report, min_examples)


def _check_output(ex: dict[str, Any], name: str, lineno: int, report: DatasetReport) -> bool:
    """`preferred_output` / `non_preferred_output`: a non-empty list of assistant messages with text."""
    output = ex.get(name)
    if not isinstance(output, list) or not output:
        report.add(f"missing_{name}", lineno, "" if name not in ex else f"got {_short(output)}")
        return False
    for i, m in enumerate(output):
        problem = ""
        if not isinstance(m, dict):
            problem = f"item {i} is not a message object"
        elif set(m) - OUTPUT_MESSAGE_KEYS:
            problem = f"item {i} has unknown key(s) {', '.join(sorted(set(m) - OUTPUT_MESSAGE_KEYS))}"
        elif m.get("role") != "assistant":
            problem = f"item {i} has role {_short(m.get('role'))}, not 'assistant'"
        elif not isinstance(m.get("content"), str) or not m["content"].strip():
            problem = f"item {i} has no text content"
        if problem:
            report.add(f"invalid_{name}", lineno, problem)
            return False
    return True


def check_preference_jsonl(
    content: bytes,
    *,
    min_examples: int,
    max_tokens: int,
    count_tokens: CountTokens | None = None,
) -> DatasetReport:
    """OpenAI's preference (DPO) format, checked as check_chat_jsonl checks chat: every problem of every line.

    The input's messages need no assistant turn (the outputs are the answers). An example's size is its input
    with the longer of its two outputs (max_tokens is held against the context length); total_tokens counts
    both sequences, which the trainer both runs."""
    report = DatasetReport(format="preference")
    for lineno, ex in _objects(_decode(content), report):
        unknown = set(ex) - PREFERENCE_KEYS
        if unknown:
            report.add("unrecognized_example_key", lineno, ", ".join(sorted(unknown)))
        ok = True
        inp = ex.get("input")
        messages: Any = None
        if not isinstance(inp, dict):
            report.add("missing_input", lineno, "" if "input" not in ex else f"got {_short(inp)}")
            ok = False
        else:
            bad = set(inp) - INPUT_KEYS
            if bad:
                report.add("unrecognized_input_key", lineno, ", ".join(sorted(bad)))
                ok = False
            messages = inp.get("messages")
            if not isinstance(messages, list) or not messages:
                report.add("missing_input_messages", lineno)
                ok = False
            elif not _check_messages(messages, lineno, report, MESSAGE_KEYS - {"weight"}):
                ok = False
        ok = _check_output(ex, "preferred_output", lineno, report) and ok
        ok = _check_output(ex, "non_preferred_output", lineno, report) and ok
        if ok and count_tokens is not None:
            chosen = count_tokens(messages + ex["preferred_output"])
            rejected = count_tokens(messages + ex["non_preferred_output"])
            _count(report, lineno, max(chosen, rejected), max_tokens, total=chosen + rejected)
    return _raise_if_any(report, min_examples)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_dspy_fields(ex: dict[str, Any], lineno: int, report: DatasetReport) -> bool:
    """A DSPy example's question, answer and context (its keys are checked by the caller)."""
    ok = True
    for name in ("question", "answer"):
        if not _text(ex.get(name)):
            report.add(f"missing_{name}", lineno, "" if name not in ex else f"got {_short(ex.get(name))}")
            ok = False
    if "context" in ex:
        context = ex["context"]
        problem = ""
        if isinstance(context, list):
            if len(context) > MAX_DSPY_CONTEXT:
                problem = f"got a list of {len(context)}"
            else:
                bad = next((i for i, c in enumerate(context) if not isinstance(c, str)), None)
                if bad is not None:
                    problem = f"item {bad} is {_short(context[bad])}, not a string"
        elif not isinstance(context, str):
            problem = f"got {_short(context)}"
        if problem:
            report.add("invalid_context", lineno, problem)
            ok = False
    return ok


def _dspy_context(ex: dict[str, Any]) -> list[str]:
    context = ex.get("context")
    if context is None:
        return []
    return [context] if isinstance(context, str) else list(context)


def check_dspy_jsonl(
    content: bytes,
    *,
    min_examples: int,
    max_tokens: int,
    count_tokens: CountTokens | None = None,
) -> DatasetReport:
    """tunelog's DSPy example format, checked as check_chat_jsonl checks chat: every problem of every line.

    An example's size is the conversation a chat model would see: the question (then the context strings, one
    a line) as the user's message, and the answer as the assistant's."""
    report = DatasetReport(format="dspy")
    for lineno, ex in _objects(_decode(content), report):
        unknown = set(ex) - DSPY_KEYS
        if unknown:
            report.add("unrecognized_example_key", lineno, ", ".join(sorted(unknown)))
        ok = _check_dspy_fields(ex, lineno, report)
        if ok and count_tokens is not None:
            user = "\n".join([ex["question"], *_dspy_context(ex)])
            _count(report, lineno, count_tokens([{"role": "user", "content": user},
                                                 {"role": "assistant", "content": ex["answer"]}]), max_tokens)
    return _raise_if_any(report, min_examples)


def detect_format(content: bytes) -> str:
    """The file's format, "chat", "preference" or "dspy", from the first non-blank line that is a JSON object:
    `messages` makes it chat; else `question` or `answer` dspy; else `input`, `preferred_output` or
    `non_preferred_output` preference; else chat."""
    text = content.decode("utf-8-sig", errors="replace")  # an undecodable file is refused by the check itself
    for _lineno, raw in _lines(text):
        if not raw.strip():
            continue
        ex, category, _detail = _parse(raw)
        if category or not isinstance(ex, dict):
            continue
        if "messages" in ex:
            return "chat"
        if "question" in ex or "answer" in ex:
            return "dspy"
        if "input" in ex or "preferred_output" in ex or "non_preferred_output" in ex:
            return "preference"
        return "chat"
    return "chat"


def check_jsonl(
    content: bytes,
    *,
    min_examples: int,
    max_tokens: int,
    count_tokens: CountTokens | None = None,
) -> DatasetReport:
    """Check a file in whichever of the three formats its first example is; `stats()["format"]` says which."""
    check = {"chat": check_chat_jsonl, "preference": check_preference_jsonl,
             "dspy": check_dspy_jsonl}[detect_format(content)]
    return check(content, min_examples=min_examples, max_tokens=max_tokens, count_tokens=count_tokens)


def _chat_pair(messages: Any, lineno: int, report: DatasetReport) -> tuple[str, str] | None:
    """(question, answer) of a chat example: the last assistant message's text, and the text of the last user
    message before it. None (and a `no_question` problem) where the example has no such pair."""
    if not isinstance(messages, list):
        report.add("no_question", lineno, "no messages list")
        return None
    last = next((i for i in range(len(messages) - 1, -1, -1)
                 if isinstance(messages[i], dict) and messages[i].get("role") == "assistant"), None)
    if last is None:
        report.add("no_question", lineno, "no assistant message")
        return None
    if not _text(messages[last].get("content")):
        report.add("no_question", lineno, f"message {last} (the last assistant message) has no text")
        return None
    user = next((i for i in range(last - 1, -1, -1)
                 if isinstance(messages[i], dict) and messages[i].get("role") == "user"), None)
    if user is None:
        report.add("no_question", lineno, f"no user message before message {last} (the last assistant message)")
        return None
    if not _text(messages[user].get("content")):
        report.add("no_question", lineno, f"message {user} (the question) has no text")
        return None
    return messages[user]["content"], messages[last]["content"]


def dspy_examples(content: bytes) -> list[dict[str, Any]]:
    """The examples of a file already checked (check_jsonl) in chat or DSPy format, for the dspy method:
    `{"question": str, "context": list[str], "answer": str, "line": int}` each, in file order.

    A DSPy example is taken as it is (a string context is a one-item list; none is []). A chat example's answer
    is its last assistant message, its question the last user message before that (earlier turns and the system
    message are not used), its context []. Every line without such a pair is refused, all of them in one error
    (`no_question`, with line numbers); so is a line the check would have refused. A preference file is refused."""
    fmt = detect_format(content)
    if fmt == "preference":
        raise ValidationError("the dspy method needs a training file in chat format ({\"messages\": [...]}) or "
                              "DSPy example format ({\"question\": ..., \"answer\": ...}); this file is in "
                              "preference (DPO) format", param="training_file", code="invalid_file_format")
    report = DatasetReport(format=fmt)
    examples: list[dict[str, Any]] = []
    for lineno, ex in _objects(_decode(content), report):
        if fmt == "dspy":
            if _check_dspy_fields(ex, lineno, report):
                examples.append({"question": ex["question"], "context": _dspy_context(ex), "answer": ex["answer"],
                                 "line": lineno})
            continue
        pair = _chat_pair(ex.get("messages"), lineno, report)
        if pair is not None:
            examples.append({"question": pair[0], "context": [], "answer": pair[1], "line": lineno})
    problems = _problems(report)
    if problems:
        raise ValidationError("Invalid training file for the dspy method: " + "; ".join(problems),
                              param="training_file", code="invalid_file_format")
    return examples


# ---- eval files (purpose "evals"): OpenAI's JSONL of {"item": {...}, "sample"?: {...}} ---------------------
EVAL_LINE_KEYS = {"item", "sample"}
MAX_EVAL_PROBLEMS = 50  # problems named in one error message (each with its line)
MAX_EVAL_LINE_BYTES = 64 * 1024  # one item (with its sample): rendered into prompts and graded, so bounded
MAX_EVAL_DEPTH = 32


def _eval_value_problem(value: Any, depth: int = 0) -> str | None:
    """What makes a parsed value unfit to store and render: too deep, or text with NUL (Postgres refuses it)."""
    if depth > MAX_EVAL_DEPTH:
        return f"nested deeper than {MAX_EVAL_DEPTH} levels"
    if isinstance(value, str):
        return "text holds a NUL character (\\u0000)" if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _eval_value_problem(k, depth + 1) or _eval_value_problem(v, depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _eval_value_problem(v, depth + 1)
            if found:
                return found
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


def eval_lines(content: bytes, *, max_items: int,
               check_item: Callable[[dict[str, Any]], list[str]] | None = None,
               need_sample: bool = False, what: str = "eval file") -> list[dict[str, Any]]:
    """Every line's {"item", "sample"?} of an eval data file, or a 400 naming every problem with its line (up to
    MAX_EVAL_PROBLEMS of them, then how many more). `check_item` adds an item's schema errors; `need_sample`
    (a jsonl run, graded on the samples it gives): each line needs a sample with an `output_text` string."""
    text = _decode(content)
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    n = 0

    def problem(lineno: int, detail: str) -> None:
        problems.append(f"line {lineno}: {detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + '...'}")

    for lineno, raw in _lines(text):
        if not raw.strip():
            continue
        n += 1
        if n > max_items:
            problem(lineno, f"more than {max_items} items (the limit of one run)")
            break
        if len(raw.encode()) > MAX_EVAL_LINE_BYTES:
            problem(lineno, f"the line is over {MAX_EVAL_LINE_BYTES} bytes")
            continue
        try:
            # NaN, Infinity and 1e999 are not JSON numbers, and Postgres could not store them
            value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
        except RecursionError:
            problem(lineno, CATEGORIES["too_deep"])
            continue
        except ValueError as e:
            problem(lineno, f"{CATEGORIES['invalid_json']} ({getattr(e, 'msg', str(e))})")
            continue
        unfit = _eval_value_problem(value)
        if unfit:
            problem(lineno, unfit)
            continue
        if not isinstance(value, dict) or not isinstance(value.get("item"), dict):
            problem(lineno, 'each line must be a JSON object with an "item" object: {"item": {...}}')
            continue
        unknown = set(value) - EVAL_LINE_KEYS
        if unknown:
            problem(lineno, f"unknown key(s) {', '.join(sorted(map(str, unknown)))} (a line holds \"item\" and "
                            "optionally \"sample\")")
            continue
        sample = value.get("sample")
        if sample is not None and not isinstance(sample, dict):
            problem(lineno, '"sample" must be an object, e.g. {"output_text": "..."}')
            continue
        if need_sample and not (isinstance(sample, dict) and isinstance(sample.get("output_text"), str)):
            problem(lineno, 'a jsonl run grades the samples it is given: each line needs "sample": '
                            '{"output_text": "..."}')
            continue
        if check_item is not None:
            errors = check_item(value["item"])
            if errors:
                for e in errors:
                    problem(lineno, f"does not match the eval's item_schema: {e}")
                continue
        rows.append({"item": value["item"], **({"sample": sample} if sample is not None else {})})
    if not rows and not problems:
        problems.append(f"the {what} has no items")
    if problems:
        shown = problems[:MAX_EVAL_PROBLEMS]
        more = f"; and {len(problems) - len(shown)} more problem(s)" if len(problems) > len(shown) else ""
        raise ValidationError(f"Invalid {what}: " + "; ".join(shown) + more, param="file",
                              code="invalid_file_format")
    return rows
