"""Graders for eval runs: OpenAI's string_check, text_similarity, score_model and label_model.

`grade(criterion, item, sample, generate=..., embed=...)` runs one normalized criterion (from
`domain.evals.validate_eval`) on one data-source item and the candidate model's sample, and returns
OpenAI's output-item result `{"name", "type", "score", "passed", "sample"}` (plus `"error"` when the
judge's reply could not be read). Model calls go through the caller's `generate` / `embed`; their
exceptions propagate, so the worker decides whether to retry or mark the item errored.

The item schema checks are in eventlog/item_schema.py (the API runs them too).
"""
from __future__ import annotations

import functools
import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from domain.evals import SIMILARITY_METRICS, render, string_check
from eventlog.item_schema import clip as _clip

MAX_SIMILARITY_CHARS = 8000  # characters of each text a similarity metric compares (longer ones are cut)
Generate = Callable[[str, list[dict], dict], str]
Embed = Callable[[list[str]], Sequence[Sequence[float]]]


# Result "type" per grader. OpenAI's Result.type is documented as 'The grader type (for example,
# "string-check-grader")'; the other three names follow the same pattern.
RESULT_TYPES = {
    "string_check": "string-check-grader",
    "text_similarity": "text-similarity-grader",
    "score_model": "score-model-grader",
    "label_model": "label-model-grader",
}


# -------------------------------------------------------------------------------------- text similarity

_WORD = re.compile(r"[^\W_]+")


def _tokens(text: str) -> list[str]:
    """Lowercased runs of letters and digits. On ASCII text this is exactly rouge-score's tokenizer (which
    drops everything outside [a-z0-9]); unlike it, letters of any script are kept."""
    return _WORD.findall(text.lower())


class _RougeTokenizer:
    """rouge-score's default tokenization (lowercase, alphanumeric runs, Porter stem of words over 3
    characters) made Unicode-aware via _tokens."""

    def __init__(self):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return [self._stemmer.stem(t) if len(t) > 3 else t for t in _tokens(text)]


@functools.cache
def _rouge(metric: str):
    from rouge_score import rouge_scorer

    key = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
    return key, rouge_scorer.RougeScorer([key], tokenizer=_RougeTokenizer())


class _NoWordNet:
    """Stands in for nltk's WordNet corpus (not installed; nothing is downloaded): no synonyms."""

    @staticmethod
    def synsets(*_args, **_kwargs) -> list:
        return []


def _cosine(output: str, reference: str, embed: Embed | None) -> float:
    if embed is None:
        raise ValueError("the cosine metric needs an embed function")
    vectors = embed([output, reference])
    if len(vectors) != 2:
        raise ValueError(f"embed returned {len(vectors)} vectors for 2 texts")
    a, b = (list(map(float, v)) for v in vectors)
    if len(a) != len(b) or not a:
        raise ValueError("embed returned vectors of different or zero length")
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    if not norm:
        return 0.0
    return min(1.0, max(0.0, sum(x * y for x, y in zip(a, b)) / norm))


def similarity(metric: str, output: str, reference: str, *, embed: Embed | None = None) -> float:
    """Score in [0, 1] of `output` against `reference` with one of OpenAI's text_similarity metrics.

    The graders guide lists: fuzzy_match "Fuzzy string match between input and reference, using rapidfuzz",
    bleu, gleu ("Google BLEU"), meteor, cosine ("Cosine similarity between embedded input and reference")
    and rouge-* ("the ROUGE score"). Here:

    - fuzzy_match: rapidfuzz `fuzz.WRatio / 100` (the guide names the library, not the scorer), on the raw
      strings (case-sensitive, like rapidfuzz's default).
    - bleu: nltk `sentence_bleu` (up to 4-grams, smoothing method1); gleu: nltk `sentence_gleu`;
      meteor: nltk `meteor_score` with exact and Porter-stem matches only -- WordNet is not installed, so
      a stand-in with no synonyms is passed (synonyms never match). All three on `_tokens`.
    - rouge_1..rouge_5, rouge_l: rouge-score's F-measure with Porter stemming (rouge-score's tokenizer,
      Unicode-aware).
    - cosine: `embed([output, reference])` gives two vectors; their cosine, clipped to [0, 1]; embed is
      required (ValueError without it).

    Edge cases: two blank texts score 1.0 and one blank text 0.0, for every metric, without calling any
    library or embed; for the token metrics, a text with no word tokens (punctuation only) scores 0.0
    unless both texts are equal after stripping (1.0). Identical texts score 1.0 except where the metric
    itself says otherwise: meteor's fragmentation penalty keeps it just under 1 (0.996 for 5 words),
    bleu and rouge_n need at least 4 and n tokens respectively."""
    output, reference = output[:MAX_SIMILARITY_CHARS], reference[:MAX_SIMILARITY_CHARS]  # rouge_l is quadratic
    if metric not in SIMILARITY_METRICS:
        raise ValueError(f"unknown evaluation_metric {metric!r}")
    if not output.strip() and not reference.strip():
        return 1.0
    if not output.strip() or not reference.strip():
        return 0.0
    if metric == "cosine":
        return _cosine(output, reference, embed)
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.WRatio(output, reference) / 100.0
    hyp, ref = _tokens(output), _tokens(reference)
    if not hyp or not ref:
        return 1.0 if output.strip() == reference.strip() else 0.0
    if metric.startswith("rouge"):
        key, scorer = _rouge(metric)
        return float(scorer.score(reference, output)[key].fmeasure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about missing higher-order n-grams on short texts
        if metric == "bleu":
            from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

            score = sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1)
        elif metric == "gleu":
            from nltk.translate.gleu_score import sentence_gleu

            score = sentence_gleu([ref], hyp)
        else:
            from nltk.translate.meteor_score import meteor_score

            score = meteor_score([ref], hyp, wordnet=_NoWordNet())
    return min(1.0, max(0.0, float(score)))


# ------------------------------------------------------------------------------------------ model graders

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[A-Za-z]*\s*|\s*```$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_SCORE_KEYS = ("score", "result", "rating", "grade")
_KEYED_NUMBER = re.compile(r'"(?:score|result|rating|grade)"\s*:\s*"?([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)',
                           re.IGNORECASE)


def _answer_text(text: str) -> str:
    """The judge's reply without reasoning blocks (<think>...</think>) and code fences."""
    return _FENCE.sub("", _THINK.sub("", text).strip()).strip()


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        return None
    return number if math.isfinite(number) else None


def parse_score(text: str) -> float | None:
    """The judge's score: a JSON number, a JSON object's "score"/"result"/"rating"/"grade", or else the
    first number in the reply (after any <think> block). None when there is none."""
    answer = _answer_text(text)
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in _SCORE_KEYS:
            number = _as_number(data.get(key))
            if number is not None:
                return number
    else:
        number = _as_number(data)
        if number is not None:
            return number
    keyed = _KEYED_NUMBER.search(answer)
    if keyed:
        return _as_number(keyed.group(1))
    first = _NUMBER.search(answer)
    return _as_number(first.group(0)) if first else None


def _label_pattern(label: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(label.strip()) + r"(?!\w)", re.IGNORECASE)


def parse_label(text: str, labels: list[str]) -> str | None:
    """The judge's label: a JSON {"label": ...} or JSON string, the whole reply, else the label found
    earliest as a whole word (case-insensitive; the longer label on a tie), else the earliest as a
    substring. None when no label appears."""
    answer = _answer_text(text)
    by_key = {label.strip().casefold(): label for label in labels}
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if isinstance(data, dict):
        data = data.get("label")
    if isinstance(data, str) and data.strip().casefold() in by_key:
        return by_key[data.strip().casefold()]
    bare = answer.strip().strip("\"'`*.!").strip().casefold()
    if bare in by_key:
        return by_key[bare]
    for find in (lambda label: _label_pattern(label).search(answer),
                 lambda label: re.search(re.escape(label.strip()), answer, re.IGNORECASE)):
        hits = [(m.start(), -len(label), label) for label in labels if (m := find(label))]
        if hits:
            return min(hits)[2]
    return None


def _fmt(number: float) -> str:
    return f"{number:g}"


def _with_instruction(messages: list[dict], instruction: str) -> list[dict]:
    """Add the answer-format instruction to the judge's messages. OpenAI's model graders constrain the
    judge with structured outputs; a generic `generate` can't, so we ask in words. It goes at the end of the
    last system/developer message, or, with none, in a system message put first (some chat templates refuse
    a system message anywhere else)."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message["role"] in ("system", "developer"):
            message["content"] = f"{message['content']}\n\n{instruction}" if message["content"] else instruction
            return out
    return [{"role": "system", "content": instruction}, *out]


def _judge_messages(criterion: dict, ctx: dict) -> list[dict]:
    return [{"role": m["role"], "content": render(m["content"], ctx)} for m in criterion["input"]]


def _result(criterion: dict, score: float, passed: bool, sample: dict | None = None) -> dict:
    return {"name": criterion["name"], "type": RESULT_TYPES[criterion["type"]], "score": float(score),
            "passed": bool(passed), "sample": sample}


def _unparseable(criterion: dict, sample: dict, message: str) -> dict:
    result = _result(criterion, 0.0, False, sample)
    result["error"] = {"code": "grader_output_unparseable", "message": message}
    return result


def grade(criterion: dict, item: dict, sample: dict | None, *, generate: Generate | None = None,
          embed: Embed | None = None) -> dict:
    """Run one normalized testing criterion on one item and the candidate's sample ({"output_text": ...}).

    Returns {"name", "type", "score", "passed", "sample"}; a judge reply that can't be read adds
    {"error": {"code": "grader_output_unparseable", "message"}} with score 0 and passed False.
    `generate(model, messages, sampling_params) -> str` runs the judge for score_model/label_model;
    `embed(texts) -> vectors` serves the cosine metric. Their exceptions propagate."""
    ctx = {"item": item, "sample": sample if sample is not None else {}}
    kind = criterion["type"]
    if kind == "string_check":
        ok = string_check(render(criterion["input"], ctx), render(criterion["reference"], ctx), criterion["operation"])
        return _result(criterion, 1.0 if ok else 0.0, ok)
    if kind == "text_similarity":
        score = similarity(criterion["evaluation_metric"], render(criterion["input"], ctx),
                           render(criterion["reference"], ctx), embed=embed)
        return _result(criterion, score, score >= criterion["pass_threshold"])
    if kind not in ("score_model", "label_model"):
        raise ValueError(f"unknown grader type {kind!r}")
    if generate is None:
        raise ValueError(f"the {kind} grader needs a generate function")

    if kind == "score_model":
        lo, hi = criterion["range"]
        instruction = (f"Reply with only the score: a single number from {_fmt(lo)} to {_fmt(hi)}, "
                       "and nothing else.")
    else:
        instruction = ("Reply with only one of these labels, exactly as written, and nothing else: "
                       + ", ".join(json.dumps(label, ensure_ascii=False) for label in criterion["labels"]) + ".")
    messages = _with_instruction(_judge_messages(criterion, ctx), instruction)
    text = generate(criterion["model"], messages, dict(criterion.get("sampling_params") or {}))
    text = "" if text is None else str(text)
    trace = {"input": messages, "output": [{"role": "assistant", "content": text}]}

    if kind == "score_model":
        score = parse_score(text)
        if score is None:
            return _unparseable(criterion, trace, f"the grader model's reply has no score: {_clip(text, 200)!r}")
        score = min(hi, max(lo, score))
        return _result(criterion, score, score >= criterion["pass_threshold"], trace)

    label = parse_label(text, criterion["labels"])
    if label is None:
        return _unparseable(criterion, trace, f"the grader model's reply has none of the labels: {_clip(text, 200)!r}")
    trace["label"] = label
    ok = label in criterion["passing_labels"]
    return _result(criterion, 1.0 if ok else 0.0, ok, trace)
