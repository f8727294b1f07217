"""DSPy programs ("soft fine-tuning"): the tutor program, its tolerant adapter, and its saved state.

The program is the tutor: a question and the passages retrieved for it go in, an answer with the school's
educational instructions comes out (`TutorSignature`, one `dspy.Predict` named `respond`). Optimizers change
only its instructions and demos; what they produce is saved as DSPy's JSON state (never pickled code), and
`check_state` is the one gate every state passes before it is stored or loaded (jobs' results and imports
alike): known keys only, the tutor's three fields, bounded sizes, no LM configuration.

Chat runs the same program's prompt (`render`) through the model it was optimized on, so that what a pupil
is answered with is exactly what the optimizer scored. dspy is imported on first use only.
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from domain.errors import ValidationError

INSTRUCTIONS = (
    "You are the tutor of this school. Answer the student's question, using the passages in the context when "
    "they help. Explain clearly and step by step at the student's level, check understanding with a short "
    "question, encourage the student, and never invent facts about the school."
)
INPUT_FIELDS = ("context", "question")
OUTPUT_FIELD = "answer"
FIELDS = (*INPUT_FIELDS, OUTPUT_FIELD)

MAX_STATE_BYTES = 256 * 1024
MAX_DEMOS = 64
MAX_INSTRUCTIONS = 8000
MAX_FIELD_TEXT = 500  # a field's prefix or description
MAX_DEMO_TEXT = 16_000  # one demo value (a context list counts its items together)
MAX_CONTEXT_ITEMS = 50  # passages in one demo's context (as the DSPy example format allows)
STATE_KEYS = {"respond", "metadata"}
PREDICT_KEYS = {"traces", "train", "demos", "signature", "lm"}
SIGNATURE_KEYS = {"instructions", "fields"}
FIELD_KEYS = {"prefix", "description"}
DEMO_KEYS = {*FIELDS, "augmented"}
METADATA_KEYS = {"dependency_versions"}


def _bad(message: str, param: str) -> ValidationError:
    return ValidationError(message, param=param[:200], code="invalid_program")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in obj if k not in allowed)
    if extra:
        raise _bad(f"unknown key(s) in {where}: {', '.join(_short(k) for k in extra[:5])}; allowed: "
                   f"{', '.join(sorted(allowed))}", f"{where}.{extra[0]}")


def _text(value: Any, limit: int, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise _bad(f"{param} must be {'' if empty else 'non-empty '}text, got {_short(value)}", param)
    if len(value) > limit:
        raise _bad(f"{param} is {len(value)} characters; the limit is {limit}", param)
    if "\x00" in value:
        raise _bad(f"{param} contains NUL", param)
    return value


def check_state(raw: Any) -> dict[str, Any]:
    """A tutor program's DSPy JSON state, checked (400 naming the problem) and normalized: what `save`
    writes for this program, with `traces`/`train` empty and no LM. Accepts bytes (a file) or a parsed object."""
    param = "program"
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_STATE_BYTES:
            raise _bad(f"the program is {len(raw)} bytes; the limit is {MAX_STATE_BYTES}", param)
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise _bad(f"the program is not JSON ({type(e).__name__})", param) from None
    elif len(json.dumps(raw, default=str, ensure_ascii=False).encode()) > MAX_STATE_BYTES:
        raise _bad(f"the program is over {MAX_STATE_BYTES} bytes", param)
    if not isinstance(raw, dict):
        raise _bad(f"the program must be a JSON object (DSPy's saved state), got {_short(raw)}", param)
    _unknown(raw, STATE_KEYS, param)
    meta = raw.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _bad("program.metadata must be an object", "program.metadata")
        _unknown(meta, METADATA_KEYS, "program.metadata")
    respond = raw.get("respond")
    where = "program.respond"
    if not isinstance(respond, dict):
        raise _bad(f"{where} is required: the state of the tutor's one predictor (a program of another shape "
                   "cannot answer in chat)", where)
    _unknown(respond, PREDICT_KEYS, where)
    for key in ("traces", "train"):
        if respond.get(key) not in (None, []):
            raise _bad(f"{where}.{key} must be empty (it is optimizer scratch, not part of a program)",
                       f"{where}.{key}")
    if respond.get("lm") is not None:
        raise _bad(f"{where}.lm must be null: a program runs on the model it is registered with, never on an LM "
                   "configuration of its own", f"{where}.lm")
    sig = respond.get("signature")
    if not isinstance(sig, dict):
        raise _bad(f"{where}.signature is required (instructions and fields)", f"{where}.signature")
    _unknown(sig, SIGNATURE_KEYS, f"{where}.signature")
    instructions = _text(sig.get("instructions"), MAX_INSTRUCTIONS, f"{where}.signature.instructions", empty=False)
    fields = sig.get("fields")
    if not isinstance(fields, list) or len(fields) != len(FIELDS):
        raise _bad(f"{where}.signature.fields must list the tutor's {len(FIELDS)} fields ({', '.join(FIELDS)}), "
                   f"got {_short(fields)}", f"{where}.signature.fields")
    clean_fields = []
    for i, f in enumerate(fields):
        p = f"{where}.signature.fields[{i}]"
        if not isinstance(f, dict):
            raise _bad(f"{p} must be an object with prefix and description", p)
        _unknown(f, FIELD_KEYS, p)
        prefix = _text(f.get("prefix"), MAX_FIELD_TEXT, f"{p}.prefix", empty=False)
        expected = FIELDS[i].capitalize() + ":"
        if prefix.strip() != expected:
            raise _bad(f"{p}.prefix is {_short(prefix)}; the tutor's field {i + 1} is {expected!r} (fields: "
                       f"{', '.join(FIELDS)}, in that order)", f"{p}.prefix")
        clean_fields.append({"prefix": prefix, "description": _text(f.get("description", ""), MAX_FIELD_TEXT,
                                                                    f"{p}.description")})
    demos = respond.get("demos", [])
    if not isinstance(demos, list) or len(demos) > MAX_DEMOS:
        raise _bad(f"{where}.demos must be a list of at most {MAX_DEMOS} examples", f"{where}.demos")
    clean_demos = [_check_demo(d, f"{where}.demos[{i}]") for i, d in enumerate(demos)]
    state = {"respond": {"traces": [], "train": [], "demos": clean_demos,
                         "signature": {"instructions": instructions, "fields": clean_fields}, "lm": None}}
    size = len(state_bytes(state))  # as it is stored, served and checked again when chat loads it
    if size > MAX_STATE_BYTES:
        raise _bad(f"the program is {size} bytes as stored; the limit is {MAX_STATE_BYTES}", param)
    return state


def _check_demo(d: Any, p: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _bad(f"{p} must be an object with question, context and answer", p)
    _unknown(d, DEMO_KEYS, p)
    demo: dict[str, Any] = {}
    if "question" not in d or "answer" not in d:
        raise _bad(f"{p} needs a question and an answer", p)
    demo["question"] = _text(d["question"], MAX_DEMO_TEXT, f"{p}.question", empty=False)
    if "context" in d:
        ctx = d["context"]
        if isinstance(ctx, str):
            ctx = [ctx]
        if not isinstance(ctx, list) or len(ctx) > MAX_CONTEXT_ITEMS or not all(isinstance(c, str) for c in ctx) \
                or sum(len(c) for c in ctx) > MAX_DEMO_TEXT or any("\x00" in c for c in ctx):
            raise _bad(f"{p}.context must be a list of at most {MAX_CONTEXT_ITEMS} texts of at most {MAX_DEMO_TEXT} "
                       "characters in all", f"{p}.context")
        demo["context"] = ctx
    demo["answer"] = _text(d["answer"], MAX_DEMO_TEXT, f"{p}.answer", empty=False)
    if "augmented" in d:
        if not isinstance(d["augmented"], bool):
            raise _bad(f"{p}.augmented must be true or false", f"{p}.augmented")
        demo["augmented"] = d["augmented"]
    return demo


def fit_state(raw: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """What an optimizer produced, made to pass check_state rather than failing the job at its very end:
    demos the gate refuses (an empty answer a metric let through, text over the limits) are dropped, empty
    instructions become the tutor's, and the last demos go while the state is over the size limit. Returns
    the checked state and the number of demos dropped."""
    respond = dict(raw.get("respond") or {})
    signature = dict(respond.get("signature") or {})
    if not isinstance(signature.get("instructions"), str) or not signature["instructions"].strip():
        signature["instructions"] = INSTRUCTIONS
    signature["instructions"] = signature["instructions"][:MAX_INSTRUCTIONS]
    demos = []
    for d in list(respond.get("demos") or [])[:MAX_DEMOS]:
        try:
            demos.append(_check_demo(d, "demo"))
        except ValidationError:
            continue
    dropped = len(respond.get("demos") or []) - len(demos)
    base = {"respond": {"traces": [], "train": [], "demos": demos, "signature": signature, "lm": None}}
    while True:
        try:
            return check_state(base), dropped
        except ValidationError:
            if not base["respond"]["demos"]:
                raise
            base["respond"]["demos"].pop()
            dropped += 1


def state_bytes(state: dict[str, Any]) -> bytes:
    """The canonical bytes of a checked state (what is stored, hashed and exported)."""
    return json.dumps(state, ensure_ascii=False, sort_keys=True, indent=1).encode()


def summary(state: dict[str, Any]) -> dict[str, Any]:
    demos = state["respond"]["demos"]
    return {"demos": len(demos), "bootstrapped_demos": sum(1 for d in demos if d.get("augmented")),
            "instructions": state["respond"]["signature"]["instructions"]}


# ---- the program itself (dspy) --------------------------------------------------------------------------
def dspy_offline() -> None:
    """DSPy and litellm never reach the internet: the model cost map is the bundled one."""
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("DSPY_DISABLE_TELEMETRY", "1")


@lru_cache(maxsize=1)
def classes() -> tuple[type, type, type]:
    """(TutorSignature, TutorProgram, TolerantChatAdapter), defined on first use (importing dspy is slow)."""
    dspy_offline()
    import dspy
    from dspy.adapters.chat_adapter import ChatAdapter
    from dspy.utils.exceptions import AdapterParseError

    class TutorSignature(dspy.Signature):
        __doc__ = INSTRUCTIONS
        context: list[str] = dspy.InputField(desc="passages from the school's documents (may be empty)")
        question: str = dspy.InputField(desc="the student's question")
        answer: str = dspy.OutputField(desc="the tutor's answer")

    class TutorProgram(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.respond = dspy.Predict(TutorSignature)

        def forward(self, question: str, context: list[str] | None = None):
            return self.respond(question=question, context=list(context or []))

    class TolerantChatAdapter(ChatAdapter):
        """ChatAdapter for small models that answer without DSPy's field markers: a completion that cannot be
        parsed is read as the signature's one output field (a bool or a number is looked for in it); with
        several output fields, `name: value` lines are looked for. What still cannot be read raises
        AdapterParseError, which DSPy's evaluation counts as a failed example (never a crashed job). No
        JSONAdapter retry: it would cost a second LM call that a small model fails the same way."""

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("use_json_adapter_fallback", False)
            super().__init__(**kwargs)

        def parse(self, signature, completion: str) -> dict[str, Any]:
            try:
                return super().parse(signature, completion)
            except AdapterParseError:
                fields = _loose_fields(signature, completion)
                if fields is None:
                    raise
                return fields

    return TutorSignature, TutorProgram, TolerantChatAdapter


_MARKER = re.compile(r"\[\[\s*##\s*(\w+)\s*##\s*\]\]")


def _coerce(text: str, annotation: Any) -> Any:
    if annotation is bool:
        m = re.search(r"\b(yes|no|true|false|correct|incorrect)\b", text, flags=re.IGNORECASE)
        if not m:
            raise ValueError("no yes/no")
        return m.group(1).lower() in ("yes", "true", "correct")
    if annotation in (int, float):
        m = re.search(r"-?\d+(?:\.\d+)?", text)
        if not m:
            raise ValueError("no number")
        return annotation(float(m.group(0))) if annotation is int else float(m.group(0))
    if annotation is str:
        return text
    raise ValueError(f"cannot read a {annotation!r} loosely")


def _loose_fields(signature, completion: str) -> dict[str, Any] | None:
    outputs = signature.output_fields
    text = _MARKER.sub("", completion).strip()
    try:
        if len(outputs) == 1:
            name, field = next(iter(outputs.items()))
            if not text:
                return None
            return {name: _coerce(text, field.annotation)}
        found = {}
        for name, field in outputs.items():
            m = re.search(rf"(?im)^\W*{re.escape(name)}\W*[:=]\s*(.+)$", completion)
            if not m:
                return None
            found[name] = _coerce(m.group(1).strip(), field.annotation)
        return found
    except ValueError:
        return None


def new_program():
    return classes()[1]()


def load_program(state: dict[str, Any]):
    """A TutorProgram with a checked state (check_state first: DSPy's own loader trusts its input)."""
    program = new_program()
    program.load_state(state)
    return program


def render(state: dict[str, Any], question: str, context: list[str], extra_system: str = "") -> list[dict[str, str]]:
    """The chat messages the program sends its model for this question (DSPy's ChatAdapter, with the
    program's instructions and demos): exactly what the optimizer evaluated."""
    _signature, _program, adapter_cls = classes()
    predictor = _loaded(state).respond
    messages = adapter_cls().format(predictor.signature, predictor.demos, {"question": question,
                                                                         "context": context})
    if extra_system:  # the client's own system message: after the program's, as chat does for every model
        messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + extra_system}
    return [{"role": m["role"], "content": m["content"]} for m in messages]


_programs: OrderedDict[str, Any] = OrderedDict()
_programs_lock = threading.Lock()


def _loaded(state: dict[str, Any]):
    key = json.dumps(state, sort_keys=True)
    with _programs_lock:
        program = _programs.pop(key, None)
        if program is None:
            program = load_program(state)
        _programs[key] = program
        while len(_programs) > 32:
            _programs.popitem(last=False)
        return program


_PARTIAL_MARKER = re.compile(r"\[\[[^\]]*$")  # "[[ ## compl" at the very end: a marker the length cap cut off


class AnswerFilter:
    """The answer field of a streamed DSPy completion: a leading `[[ ## answer ## ]]` header is dropped, and
    the stream ends at the next marker (`[[ ## completed ## ]]`), closing the generation there. A completion
    without markers (small models) passes through whole. Markers split across pieces are held back until
    they can be told apart from text. `text` is the answer once iteration ends."""

    HOLD = len("[[ ## completed ## ]]") + 8

    def __init__(self, pieces: Iterator[str], close: Callable[[], None], result: Any = None,
                 count_tokens: Callable[[str], int] | None = None):
        self._pieces = iter(pieces)
        self._close = close
        self._result = result  # a Generation: its text becomes the answer's (and its tokens, when cut short)
        self._count_tokens = count_tokens
        self.raw = ""
        self.text = ""
        self._sent = 0  # characters of the answer already yielded
        self._start: int | None = None  # where the answer begins in raw
        self._done = False

    def __iter__(self) -> Iterator[str]:
        return self

    def _answer(self, final: bool) -> tuple[str, bool]:
        """(answer so far, whether it has ended) from the raw text."""
        raw = self.raw
        if self._start is None:
            head = raw.lstrip()
            m = _MARKER.match(head)
            if m and m.group(1) == OUTPUT_FIELD:
                self._start = len(raw) - len(head) + m.end()
            elif m or final or (head and head != "[" and not (
                    head.startswith("[[") and "]]" not in head and len(head) <= self.HOLD)):
                self._start = 0  # no header coming: the whole completion is the answer (up to a marker)
            else:
                return "", False
        body = raw[self._start:]
        parts, pos, ended = [], 0, False
        for m in _MARKER.finditer(body):
            parts.append(body[pos:m.start()])
            pos = m.end()
            if m.group(1) != OUTPUT_FIELD:  # the next field, or [[ ## completed ## ]]: the answer is over
                ended = True
                break
        if ended or final:
            rest = [] if ended else [_PARTIAL_MARKER.sub("", body[pos:])]  # cut at max_tokens inside a marker
            return "".join(parts + rest).strip(), True
        tail = body[pos:]
        # hold back what may be the start of a marker, and trailing blanks (the final answer has none)
        cut = tail.rfind("[[")
        if cut < 0 or len(tail) - cut > self.HOLD:
            cut = len(tail) - 1 if tail.endswith("[") else -1
        if cut >= 0:
            tail = tail[:cut]
        return "".join(parts + [tail]).strip(), False

    def __next__(self) -> str:
        while not self._done:
            try:
                piece = next(self._pieces)
            except StopIteration:
                answer, _ = self._answer(final=True)
                self._done = True
                return self._emit(answer, final=True)
            self.raw += piece
            answer, ended = self._answer(final=False)
            if ended:
                self._done = True
                self._close()  # the rest is markers: stop generating
                return self._emit(answer, final=True)
            out = self._emit(answer, final=False)
            if out:
                return out
        raise StopIteration

    def _emit(self, answer: str, final: bool) -> str:
        if final:
            answer = answer.rstrip()
            self.text = answer
            self._finish()
        new = answer[self._sent:]
        self._sent = len(answer)
        if final and not new:
            raise StopIteration
        return new

    def _finish(self) -> None:
        r = self._result
        if r is None:
            return
        r.text = self.text
        if not r.completion_tokens and self.raw:  # generation stopped at the end marker: count what was made
            r.completion_tokens = (self._count_tokens(self.raw) if self._count_tokens is not None
                                   else len(self.raw.split()))
            r.finish_reason = "stop"

    def close(self) -> None:
        self._close()
