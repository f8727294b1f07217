"""Personal data redacted from training examples and prompts before they leave for an external provider.

What is replaced, and by what:
- email addresses (local@domain.tld, with plus-addressing, dots and subdomains): `[EMAIL]`;
- phone numbers written as phone numbers: international ones starting with `+` (`+44 20 7946 0958`,
  `+1-202-555-0143`, `+447700900123`), North American (`(202) 555-0143`, `202-555-0143`, `202.555.0143`),
  UK national (`020 7946 0958`, `07700 900123`) and French national (`06 12 34 56 78`): `[PHONE]`;
- the names of a configured roster (pupils, staff), matched as whole words, ignoring case: `[NAME]`.

What is left alone: numbers that are not written as phones, so the teaching material survives: digit runs
without separators (unless they start with `+`), decimals (`3.14159`), sums (`1234 + 5678 = 6912`), years,
dates (`2024-05-01`), times (`10:30`), ranges (`10-20`), version numbers, ISBNs, money (`$1,000,000`).

Redaction is best-effort: a name that is not in the roster is not found, nor is a phone number in an unusual
layout. Roster names are matched wherever they stand as words, so a pupil called Mark also redacts the verb
"mark". Text is matched (and sent) in Unicode NFC, the composed form, so "José" is found however it is encoded.
The local copy of a file is never changed; callers redact what they send.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
NAME = "[NAME]"
FORMATS = ("chat", "preference")
MAX_ROSTER_NAMES = 10000
MAX_NAME_CHARS = 100

# Emails, then phones, in one alternation: at a position where both could start, the email wins
# ("202-555-0143@school.org" is one email). Possessive quantifiers and the lookbehinds keep every scan linear:
# a match may only start where a local part starts, never in the middle of a word or a dotted run.
_CONTACT = re.compile(r"""
    (?P<email>
        (?<![A-Za-z0-9_.%+-])(?<![A-Za-z0-9_]')          # the start of the local part, not its middle
        [A-Za-z0-9_%+-]++(?:['.][A-Za-z0-9_%+-]++)*+     # alice, alice.smith+maths, o'brien
        @(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+
        (?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})        # a top-level domain: letters, or punycode
        (?![A-Za-z0-9-])
    )
  | (?P<intl>                                            # +44 20 7946 0958, +1-202-555-0143, (+44) 20 ...
        (?<![\w)+])                                      # not a sum's second operand (2+44...)
        (?:\+\d++|\(\+\d{1,3}\))
        (?:[ .-]?(?:\(\d{1,4}\)|\d++))*+                 # groups, a trunk prefix like (0) among them
    )
  | (?<![\w+-])(?<!\d[.,/])                              # not the tail of a longer number, date or ISBN
    (?:
        (?P<nanp>                                        # (202) 555-0143, 202-555-0143, 1 800 555 0199
            \(\d{3}\)[ ]?\d{3}[-. ]\d{4}
          | (?:1[-. ])?\d{3}(?P<nanp_sep>[-. ])\d{3}(?P=nanp_sep)\d{4}
        )
      | (?P<uk>                                          # 020 7946 0958, 07700 900123, (01632) 960123
            (?:\(0\d{2,4}\)[ ]?|0\d{2,4}[ -])\d{3,6}(?:[ -]\d{3,6})?
        )
      | (?P<fr>                                          # 06 12 34 56 78, 01.23.45.67.89
            0[1-9](?P<fr_sep>[ .-])\d{2}(?:(?P=fr_sep)\d{2}){3}
        )
    )
    (?!\w|[-.,:/]\d)                                     # nor the head of one
""", re.VERBOSE)

_LETTER = re.compile(r"[^\W\d_]")
_WORD = r"[\w\u0300-\u036f]"  # a word character or a combining accent: a name never ends inside a word


@dataclass(frozen=True)
class Redaction:
    """How many of each kind were replaced."""

    emails: int = 0
    phones: int = 0
    names: int = 0

    @property
    def total(self) -> int:
        return self.emails + self.phones + self.names

    def __add__(self, other: object) -> Redaction:
        if not isinstance(other, Redaction):
            return NotImplemented
        return Redaction(self.emails + other.emails, self.phones + other.phones, self.names + other.names)

    def to_dict(self) -> dict[str, int]:
        return {"emails": self.emails, "phones": self.phones, "names": self.names}


def _is_phone(m: re.Match[str]) -> bool:
    """The checks a regex says badly: how many digits, and which separators."""
    digits = sum(c.isdigit() for c in m.group())
    if m.group("intl") is not None:
        # E.164 numbers have at most 15 digits; dots alone (+1.202.555.0143), never mixed with spaces or
        # hyphens, and never just one ("+3.14159265358" is a signed decimal, "+0.5 0.25 0.125" a sequence)
        seps = re.findall(r"(?<=[\d)])[ .-](?=[\d(])", m.group())
        if "." in seps and (set(seps) != {"."} or len(seps) < 2):
            return False
        return 8 <= digits <= 15
    if m.group("uk") is not None:
        return 10 <= digits <= 11
    return True  # nanp, fr: their shape is the whole check


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be "chat" or "preference", got {fmt!r:.60}')


def _build_trie(names: Iterable[str]) -> dict[str, Any]:
    """Characters as keys (lower-cased: the regex ignores case), " " for the whitespace between words, and
    "" marking the end of a name."""
    root: dict[str, Any] = {}
    for name in names:
        node = root
        for i, word in enumerate(name.split()):
            if i:
                node = node.setdefault(" ", {})
            for ch in word:
                low = ch.lower()
                node = node.setdefault(low if len(low) == 1 else ch, {})
        node[""] = {}
    return root


def _trie_pattern(node: dict[str, Any]) -> str:
    """One regex for the whole roster, branching on each character in turn, so a scan costs the same with 10000
    names as with ten. A name that is a prefix of another ends in a greedy `(?:...)?`: the longer name is tried
    first ("Alice Smith" is one name, not "Alice" and "Smith"), the shorter if the longer one fails."""
    alts = [(r"\s+" if key == " " else re.escape(key)) + _trie_pattern(child)
            for key, child in sorted(node.items()) if key]
    if not alts:
        return ""
    body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return f"(?:{body})?" if "" in node else body


class Redactor:
    """Replaces emails, phone numbers and the roster's names. Built once (the roster is compiled), used for
    any number of texts; holds no other state."""

    def __init__(self, roster: Iterable[str] = ()) -> None:
        if isinstance(roster, str | bytes):
            raise TypeError("roster must be an iterable of names, not a single string")
        names: list[str] = []
        for i, entry in enumerate(roster, start=1):
            if not isinstance(entry, str):
                raise ValueError(f"roster name {i} is not a string")
            stripped = entry.strip()
            if not stripped:
                continue  # blank lines of a roster file
            # the messages name the position, never the name: they may reach logs
            if len(names) == MAX_ROSTER_NAMES:
                raise ValueError(f"the roster has more than {MAX_ROSTER_NAMES} names")
            if len(stripped) > MAX_NAME_CHARS:
                raise ValueError(f"roster name {i} is {len(stripped)} characters long; "
                                 f"at most {MAX_NAME_CHARS} are allowed")
            if not _LETTER.search(stripped):
                raise ValueError(f"roster name {i} has no letter")
            names.append(unicodedata.normalize("NFC", stripped))
        self.n_names = len(names)
        self._names: re.Pattern[str] | None = None
        if names:
            self._names = re.compile(rf"(?<!{_WORD})(?:{_trie_pattern(_build_trie(names))})(?!{_WORD})",
                                     re.IGNORECASE)

    def _redact_names(self, text: str) -> tuple[str, int]:
        if self._names is None or not text:
            return text, 0
        return self._names.subn(NAME, text)

    def redact_text(self, text: str) -> tuple[str, Redaction]:
        """The text with every email, phone number and roster name replaced, and how many of each."""
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        parts: list[str] = []
        emails = phones = names = 0
        pos = 0
        for m in _CONTACT.finditer(text):
            is_email = m.group("email") is not None
            if not is_email and not _is_phone(m):
                continue  # a number shaped like a phone, kept with the text around it
            # names only between the matches: a name inside an email goes with the email, and no placeholder
            # is ever searched again
            before, n = self._redact_names(text[pos:m.start()])
            parts += [before, EMAIL if is_email else PHONE]
            names += n
            emails += is_email
            phones += not is_email
            pos = m.end()
        rest, n = self._redact_names(text[pos:])
        parts.append(rest)
        return "".join(parts), Redaction(emails, phones, names + n)

    def _redact_message(self, message: Any) -> Redaction:
        """In place: a message's content, a string or a list of parts (only `{"type": "text"}` parts hold text)."""
        if not isinstance(message, dict):
            return Redaction()
        content = message.get("content")
        if isinstance(content, str):
            message["content"], found = self.redact_text(content)
            return found
        found = Redaction()
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    part["text"], more = self.redact_text(part["text"])
                    found += more
        return found

    def _redact_messages(self, messages: Any) -> Redaction:
        found = Redaction()
        if isinstance(messages, list):
            for message in messages:
                found += self._redact_message(message)
        return found

    def _redact_in_place(self, example: dict[str, Any], fmt: str) -> Redaction:
        if fmt == "chat":
            return self._redact_messages(example.get("messages"))
        inp = example.get("input")
        found = self._redact_messages(inp.get("messages")) if isinstance(inp, dict) else Redaction()
        return (found + self._redact_messages(example.get("preferred_output"))
                + self._redact_messages(example.get("non_preferred_output")))

    def redact_example(self, example: dict[str, Any], fmt: str) -> tuple[dict[str, Any], Redaction]:
        """A copy of one example ("chat" or "preference" format) with every message's content redacted; other
        keys and non-text parts are kept as they are, and `example` is not changed."""
        _check_format(fmt)
        redacted = copy.deepcopy(example)
        return redacted, self._redact_in_place(redacted, fmt)

    def redact_jsonl(self, data: bytes, fmt: str) -> tuple[bytes, Redaction]:
        """A JSONL file redacted line by line; blank lines and line endings are kept as they are. For files
        tunelog has already checked: a line that is not a JSON object is a ValueError naming the line."""
        _check_format(fmt)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise ValueError(f"the file is not UTF-8 text (line {line})") from e
        lines: list[bytes] = []
        found = Redaction()
        for lineno, raw in enumerate(text.split("\n"), start=1):
            body, cr = (raw[:-1], "\r") if raw.endswith("\r") else (raw, "")
            if not body.strip():
                lines.append(raw.encode())
                continue
            try:
                example = json.loads(body)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"line {lineno} is not valid JSON") from e
            if not isinstance(example, dict):
                raise ValueError(f"line {lineno} is not a JSON object")
            found += self._redact_in_place(example, fmt)
            try:
                out = json.dumps(example, ensure_ascii=False).encode()
            except UnicodeEncodeError:  # a lone surrogate ("\ud800") has no UTF-8: written escaped, as it came
                out = json.dumps(example).encode()
            lines.append(out + cr.encode())
        return b"\n".join(lines), found


@functools.lru_cache(maxsize=16)
def redactor_for(roster: tuple[str, ...]) -> Redactor:
    """A compiled Redactor per roster, kept: a 10,000-name roster takes about a second to compile, which must
    not be paid again by every chat request of the project (a roster changes rarely)."""
    return Redactor(roster)
