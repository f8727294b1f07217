"""Issue 6: hostile input. Datasets (random bytes, huge lines, deep nesting, NUL bytes, invalid UTF-8,
10^5 tiny lines, wrong shapes) to POST /v1/files and documents (random bytes as .pdf/.txt/.md, a PDF of
too many pages, pages sharing one huge content stream, a compressed-stream bomb) to POST /api/documents:
never a 5xx, a 4xx with a clear message (line numbers for datasets), each answer within 10 s, and nothing
appended to the log when the request is refused. Then NUL bytes, lone surrogates and deep nesting in every
kind of parameter of every route; `hf/<path>` models confined to the model roots; the Content-Disposition
of downloaded files; the chunks list paginated.
"""
from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DATA
from tests.helpers import pdf_bytes

GOOD = (DATA / "tiny_train.jsonl").read_bytes()
LINES = GOOD.decode().splitlines()
BASE = "smollm2-135m-instruct"
TIME_LIMIT = 10.0
ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
HYPOTHESIS = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def keys(stack):
    project = "hostile-" + os.urandom(4).hex()
    from eventlog.keys import hash_key, key_id_for

    return {"trainer": stack.new_key("trainer", project), "admin": stack.new_key("admin", project),
            "operator": {"key": stack.admin_key, "id": key_id_for(hash_key(stack.admin_key))}}


def appended_by(stack, key_id: str, after: int) -> list[str]:
    return [r["type"] for r in stack.sql("SELECT type FROM events WHERE global_position > %s "
                                         "AND metadata->>'actor' = %s", (after, key_id))]


def head(stack) -> int:
    return stack.sql("SELECT coalesce(max(global_position), 0) AS p FROM events")[0]["p"]


def send(stack, key: dict[str, Any], method: str, path: str, **kw):
    """The request, checked for what every hostile request must get: no 5xx, a JSON error with a message
    for a 4xx, an answer within TIME_LIMIT, and no event appended if it was refused."""
    before = head(stack)
    started = time.monotonic()
    r = stack.http(method, path, key["key"], **kw)
    elapsed = time.monotonic() - started
    assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text[:500]}"
    assert elapsed < TIME_LIMIT, f"{method} {path} took {elapsed:.1f}s"
    if r.status_code >= 400:
        err = r.json()["error"]
        assert err["message"] and len(err["message"]) < 5000, err
        assert appended_by(stack, key["id"], before) == [], "a refused request must not append anything"
    return r


# ---- datasets -------------------------------------------------------------------------------------------
def example(user: Any = "q", assistant: Any = "a", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=12)
wrong_shapes = st.one_of(
    json_values.map(lambda v: json.dumps(v)),  # any JSON at all on a line
    json_values.map(lambda v: json.dumps({"messages": v})),
    json_values.map(lambda v: json.dumps({"messages": [{"role": v, "content": "q"}, {"role": "assistant",
                                                                                    "content": "a"}]})),
    json_values.map(lambda v: json.dumps(example(user=v))),
    json_values.map(lambda v: json.dumps({"messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a", "weight": v}]})),
    json_values.map(lambda v: json.dumps({"messages": [v, {"role": "assistant", "content": "a"}]})),
)


@st.composite
def hostile_datasets(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["bytes", "huge_line", "deep", "nul", "invalid_utf8", "tiny_lines", "shapes",
                                 "separators"]))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=4096))
    if kind == "huge_line":  # one line of ~400 KB (the stack's upload limit is 512 KiB)
        size = draw(st.integers(100_000, 400_000))
        return kind, (GOOD + json.dumps(example(user="word " * (size // 5))).encode())
    if kind == "deep":
        depth = draw(st.integers(1_000, 200_000))
        inner = draw(st.sampled_from([b"[" * depth, b'{"a":' * depth, b'{"messages": ' + b"[" * depth]))
        return kind, GOOD + b"\n" + inner + b"\n"
    if kind == "nul":
        at = draw(st.integers(0, len(GOOD)))
        raw = draw(st.sampled_from([b"\x00", b"\x00" * 100, b'\\u0000']))
        return kind, GOOD[:at] + raw + GOOD[at:]
    if kind == "invalid_utf8":
        at = draw(st.integers(0, len(GOOD)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80\x80"]))
        return kind, GOOD[:at] + bad + GOOD[at:]
    if kind == "tiny_lines":
        line = draw(st.sampled_from([b"{}", b"1", b"[]", b'"x"', b"\r", b" "]))
        return kind, (line + b"\n") * 100_000
    if kind == "separators":  # JSON strings may hold U+2028, U+0085, form feeds... unescaped
        sep = draw(st.sampled_from(["\u2028", "\u2029", "\x85", "\x0c", "\x1c", "\x0b", "\r"]))
        lines = [json.dumps(example(user=f"a{sep}b"), ensure_ascii=False) for _ in range(12)]
        return kind, "\n".join(lines).encode()
    lines = list(LINES)
    n = draw(st.integers(1, len(lines)))
    lines[n - 1] = draw(wrong_shapes)
    return kind, "\n".join(lines).encode()


@settings(HYPOTHESIS, max_examples=45)
@given(case=hostile_datasets())
def test_hostile_datasets_are_refused_clearly_quickly_and_without_a_trace(stack, keys, case):
    kind, content = case
    r = send(stack, keys["trainer"], "POST", "/v1/files", files={"file": ("d.jsonl", content)},
             data={"purpose": "fine-tune"})
    if kind in ("deep", "invalid_utf8", "tiny_lines"):
        assert r.status_code == 400, f"{kind}: {r.status_code} {r.text[:300]}"
    if kind == "separators":  # valid JSONL: a line is what ends in \n, whatever a JSON string holds
        assert r.status_code == 200, r.text[:500]
    if r.status_code == 400:
        err = r.json()["error"]
        assert err["code"] == "invalid_file_format" and err["param"] == "file", err
        whole_file = "[too_few_examples]" in err["message"] and "] on line" not in err["message"]
        assert "line" in err["message"] or whole_file, f"a dataset's problems name their lines: {err['message'][:300]}"
    else:
        assert r.status_code in (200, 413), r.text[:500]


def test_a_dataset_error_names_the_line_even_for_invalid_utf8_and_deep_nesting(stack, keys):
    content = "\n".join(LINES[:4]).encode() + b"\n\xff\xfe\n" + "\n".join(LINES[4:]).encode()
    r = send(stack, keys["trainer"], "POST", "/v1/files", files={"file": ("u.jsonl", content)},
             data={"purpose": "fine-tune"})
    assert r.status_code == 400 and "line 5" in r.json()["error"]["message"], r.text
    content = "\n".join(LINES[:6]).encode() + b"\n" + b"[" * 50_000 + b"\n" + "\n".join(LINES[6:]).encode()
    r = send(stack, keys["trainer"], "POST", "/v1/files", files={"file": ("n.jsonl", content)},
             data={"purpose": "fine-tune"})
    assert r.status_code == 400, r.text
    assert "[too_deep] on line(s) 7" in r.json()["error"]["message"], r.text


# ---- documents ------------------------------------------------------------------------------------------
def pdf(pages: int, content: bytes, *, compress: bool = False, shared: bool = True) -> bytes:
    """A PDF of `pages` pages in Helvetica, built by hand; with `shared`, every page draws the one content
    stream (a small file whose text is repeated on every page)."""
    stream = zlib.compress(content, 9) if compress else content
    filt = b" /Filter /FlateDecode" if compress else b""
    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 "
                         b"/BaseFont /Helvetica >>", b"<< /Length %d%s >>\nstream\n" % (len(stream), filt)
                         + stream + b"\nendstream"]
    kids = []
    for _ in range(pages):
        contents = 4
        if not shared:
            objs.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
            contents = len(objs)
        objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                    b"/Resources << /Font << /F1 3 0 R >> >> >>" % contents)
        kids.append(b"%d 0 R" % len(objs))
    objs[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + b"] /Count %d >>" % pages
    return pdf_bytes(objs)


def text_ops(text: str) -> bytes:
    return b"BT /F1 12 Tf 72 720 Td (" + text.encode() + b") Tj ET"


def forget(stack, keys, r) -> None:
    """Delete a document a test created: each one costs the shared cpu workers an indexing (a deleted
    document's indexing is skipped)."""
    if r.status_code == 201:
        stack.http("DELETE", f"/api/documents/{r.json()['id']}", keys["trainer"]["key"])


def test_a_pdf_within_bounds_is_read(stack, keys):
    r = send(stack, keys["trainer"], "POST", "/api/documents",
             files={"file": ("ok.pdf", pdf(20, text_ops("Volcanoes erupt when magma rises."), shared=False))})
    assert r.status_code == 201, r.text
    forget(stack, keys, r)


@pytest.mark.parametrize("name, content, code", [
    # more pages than the limit (500): refused before reading any
    ("pages.pdf", pdf(600, text_ops("page")), "document_too_long"),
    # 499 pages drawing one content stream of ~100k characters: over the text limit after a few pages
    ("repeat.pdf", pdf(499, b"BT /F1 12 Tf 72 720 Td " + b"(" + b"x" * 100_000 + b") Tj ET"), "document_too_long"),
    # a 30 MB stream of text operators compressed to a few KB: over pypdf's tightened decoding limits
    ("bomb.pdf", pdf(1, b"BT /F1 12 Tf " + b"(a) Tj " * 4_300_000 + b"ET", compress=True), "unreadable_document"),
    # 300 pages, each drawing ~150k text operators from one shared compressed stream (seconds per page):
    # bounded in time (TUNELOG_PDF_MAX_SECONDS, 6 s) or, on a fast machine, by the text limit
    ("slow.pdf", pdf(300, b"BT /F1 1 Tf " + b"(a) Tj " * 150_000 + b"ET", compress=True),
     "document_too_complex document_too_long"),
])
def test_hostile_pdfs_are_refused_within_bounds(stack, keys, name, content, code):
    assert len(content) < 512 * 1024, len(content)
    r = send(stack, keys["trainer"], "POST", "/api/documents", files={"file": (name, content)})
    assert r.status_code in (400, 413), r.text[:500]
    err = r.json()["error"]
    assert err["code"] in code.split(), err
    assert name in err["message"], err


@settings(HYPOTHESIS, max_examples=40)
@given(name=st.sampled_from(["x.pdf", "x.txt", "x.md", "x", "x.PDF", "x.markdown"]),
       content=st.one_of(st.binary(max_size=3000), st.binary(max_size=3000).map(lambda b: b"%PDF-1.7\n" + b),
                         st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_bytes_as_documents_never_fail_the_server(stack, keys, name, content):
    r = send(stack, keys["trainer"], "POST", "/api/documents", files={"file": (name, content)})
    assert r.status_code in (201, 400), r.text[:500]
    forget(stack, keys, r)
    if r.status_code == 400:
        assert r.json()["error"]["code"] in ("unreadable_document", "unsupported_document", "document_too_long")


@settings(HYPOTHESIS, max_examples=25)
@given(title=st.text(ANY_CHAR, max_size=200), text=st.text(ANY_CHAR, max_size=2000))
def test_json_documents_with_any_text_never_fail_the_server(stack, keys, title, text):
    """Any title and text (NUL, lone surrogates, controls, RTL marks...): a document or a 400."""
    r = send(stack, keys["trainer"], "POST", "/api/documents", json={"title": title, "text": text})
    assert r.status_code in (201, 400), r.text[:500]
    forget(stack, keys, r)
    if r.status_code == 201:
        got = r.json()["title"]
        assert "\x00" not in got and "\n" not in got and got == got.strip()


# ---- NUL bytes, lone surrogates and deep nesting in every kind of parameter --------------------------------
NUL, SUR = "a\x00b", "a\ud800b"
DEEP = "[" * 100_000


def _raw_json(text: str) -> dict[str, Any]:
    return {"data": text.encode(), "headers": {"Content-Type": "application/json"}}


def _json(obj: Any) -> dict[str, Any]:
    return _raw_json(json.dumps(obj))  # lone surrogates escaped as \\udXXX, as any JSON client may send


# (role, method, path, request kwargs, whether a 2xx is fine too); "{job}", "{file}", "{doc}" are the
# project's own objects
HOSTILE: list[tuple[str, str, str, Callable[[], dict[str, Any]], bool]] = []


def hostile(role: str, method: str, path: str, kw: Callable[[], dict[str, Any]] = dict, ok: bool = False) -> None:
    HOSTILE.append((role, method, path, kw, ok))


for p in ("/v1/files/{x}", "/v1/files/{x}/content", "/v1/fine_tuning/jobs/{x}", "/v1/fine_tuning/jobs/{x}/events",
          "/v1/fine_tuning/jobs/{x}/checkpoints", "/api/jobs/{x}/stream", "/api/documents/{x}",
          "/api/documents/{x}/chunks", "/api/aliases/{x}", "/api/aliases/{x}/history", "/v1/models/{x}"):
    hostile("trainer", "GET", p.replace("{x}", "a%00b"))
for m, p in (("DELETE", "/v1/files/{x}"), ("POST", "/v1/fine_tuning/jobs/{x}/cancel"), ("DELETE", "/api/documents/{x}"),
             ("POST", "/api/chat/feedback/{x}/approve")):
    hostile("trainer", m, p.replace("{x}", "a%00b"))
hostile("admin", "DELETE", "/api/keys/a%00b")
for q in ("/v1/files?purpose=a%00b", "/v1/files?after=a%00b", "/v1/fine_tuning/jobs?after=a%00b",
          "/v1/fine_tuning/jobs?metadata[k]=a%00b", "/v1/fine_tuning/jobs?metadata[a%00b]=v",
          "/v1/fine_tuning/jobs/{job}/checkpoints?after=a%00b", "/v1/fine_tuning/jobs/{job}/events?after=a%00b",
          "/api/documents/{doc}/chunks?after=a%00b", "/api/documents/{doc}/chunks?after=99999999999999999999"):
    hostile("trainer", "GET", q)
for q in ("/api/events?stream=a%00b", "/api/chat/answers?model=a%00b"):
    hostile("admin", "GET", q)
hostile("admin", "GET", "/api/keys?project=a%00b", ok=True)  # a project admin's `project` is ignored
hostile("operator", "GET", "/api/keys?project=a%00b")
hostile("operator", "GET", "/api/events?stream=a%00b")
for bad in (NUL, SUR):
    hostile("trainer", "POST", "/v1/fine_tuning/jobs", lambda b=bad: _json({"model": BASE, "training_file": b}))
    hostile("trainer", "POST", "/v1/fine_tuning/jobs", lambda b=bad: _json({"model": "hf/" + b, "training_file": "f"}))
    hostile("trainer", "POST", "/v1/fine_tuning/jobs", lambda b=bad: _json(
        {"model": BASE, "training_file": "{file}", "metadata": {"k": b}}))
    hostile("trainer", "POST", "/v1/fine_tuning/jobs", lambda b=bad: _json(
        {"model": BASE, "training_file": "{file}", "validation_file": b}))
    hostile("trainer", "POST", "/api/chat/feedback", lambda b=bad: _json({"chat_id": b, "rating": 3}))
    hostile("trainer", "POST", "/api/aliases/fine", lambda b=bad: _json({"model": b, "reason": "r"}))
    hostile("trainer", "POST", "/api/aliases/fine", lambda b=bad: _json({"model": BASE, "reason": b}))
    hostile("trainer", "POST", "/v1/chat/completions", lambda b=bad: _json(
        {"model": b, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}))
    # NUL is dropped from documents (as from uploads: Postgres text cannot hold it); lone surrogates are a 400
    hostile("trainer", "POST", "/api/documents", lambda b=bad: _json({"title": b, "text": "some text"}), ok=bad == NUL)
    hostile("trainer", "POST", "/api/documents", lambda b=bad: _json({"title": "t", "text": b}), ok=bad == NUL)
    hostile("admin", "POST", "/api/keys", lambda b=bad: _json({"role": "viewer", "name": b}))
    hostile("admin", "PATCH", "/api/settings", lambda b=bad: _json({b: True}))
hostile("trainer", "POST", "/v1/fine_tuning/jobs", lambda: _json(
    {"model": BASE, "training_file": "{file}", "validation_file": 5}))
HUGE_INT = "1" + "0" * 400  # valid JSON, an int in Python, too large for a float
hostile("trainer", "POST", "/v1/fine_tuning/jobs", lambda: _raw_json(
    '{"model": "' + BASE + '", "training_file": "{file}", "method": {"type": "supervised", "supervised": '
    '{"hyperparameters": {"learning_rate_multiplier": ' + HUGE_INT + '}}}}'))
for m, p in (("POST", "/v1/fine_tuning/jobs"), ("POST", "/api/documents"), ("POST", "/api/chat/feedback"),
             ("POST", "/v1/chat/completions"), ("POST", "/api/aliases/fine")):
    hostile("trainer", m, p, lambda: _raw_json(DEEP))
for m, p in (("POST", "/api/keys"), ("PATCH", "/api/settings"), ("PUT", "/api/settings")):
    hostile("admin", m, p, lambda: _raw_json(DEEP))


@pytest.fixture(scope="module")
def objects(stack, keys):
    k = keys["trainer"]["key"]
    file_id = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", GOOD)},
                         data={"purpose": "fine-tune"}).json()["id"]
    doc_id = stack.http("POST", "/api/documents", k, json={"title": "t", "text": "Leaves are green."}).json()["id"]
    job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={"model": BASE, "training_file": file_id}).json()["id"]
    stack.http("POST", f"/v1/fine_tuning/jobs/{job}/cancel", k)
    return {"{file}": file_id, "{doc}": doc_id, "{job}": job}


def _fill(value: Any, objects: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in objects.items():
            value = value.replace(k, v)
    elif isinstance(value, bytes):
        for k, v in objects.items():
            value = value.replace(k.encode(), v.encode())
    elif isinstance(value, dict):
        value = {k: _fill(v, objects) for k, v in value.items()}
    return value


@pytest.mark.parametrize("role, method, path, kw, ok", HOSTILE,
                         ids=[f"{m} {p} {'body' if kw is not dict else ''}{i}" for i, (_r, m, p, kw, _o) in
                              enumerate(HOSTILE)])
def test_nul_surrogates_and_deep_nesting_are_4xx_not_5xx(stack, keys, objects, role, method, path, kw, ok):
    r = send(stack, keys[role], method, _fill(path, objects), **_fill(kw(), objects))
    assert 400 <= r.status_code < 500 or (ok and r.status_code < 300), f"{r.status_code} {r.text[:300]}"


# ---- hf/<path> models: confined to the model roots --------------------------------------------------------
def test_hf_models_outside_the_model_roots_are_400_and_inside_accepted(stack, keys, tmp_path):
    k = keys["trainer"]
    file_id = stack.http("POST", "/v1/files", k["key"], files={"file": ("t.jsonl", GOOD)},
                         data={"purpose": "fine-tune"}).json()["id"]
    outside = tmp_path / "model"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    model_dir = Path(stack.env["TUNELOG_MODEL_DIR"])
    link = model_dir / f"link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(outside, target_is_directory=True)
    try:
        messages = set()
        for model in (f"hf/{outside}", "hf//etc", f"hf/{outside}/../../../../etc", f"hf/{tmp_path}/missing",
                      "hf/../../../../../../etc", f"hf/{link.name}", f"hf/{link}"):
            r = send(stack, k, "POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id})
            assert r.status_code == 400, (model, r.text)
            err = r.json()["error"]
            assert err["param"] == "model" and "TUNELOG_MODEL_ROOTS" in err["message"], err
            messages.add(err["message"].replace(repr(model), "MODEL"))
        assert len(messages) == 1, "the answer must not tell which paths outside the roots exist"
        for model in (f"hf/{model_dir / BASE}", f"hf/{BASE}"):  # inside: absolute, or relative to the model dir
            r = send(stack, k, "POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id})
            assert r.status_code == 200, r.text
            stack.http("POST", f"/v1/fine_tuning/jobs/{r.json()['id']}/cancel", k["key"])
    finally:
        link.unlink()


def test_model_path_refuses_outside_folders_for_the_workers_too(tmp_path, monkeypatch):
    """Training and serving resolve hf/<path> through the same function as the API."""
    from eventlog.catalog import ModelPathError, model_path

    root, extra, elsewhere = tmp_path / "models", tmp_path / "more", tmp_path / "elsewhere"
    for d in (root / "m", extra / "n", elsewhere):
        d.mkdir(parents=True)
    (root / "escape").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.delenv("TUNELOG_MODEL_ROOTS", raising=False)
    assert model_path(root, "hf/m") == (root / "m").resolve()
    for bad in (f"hf/{extra / 'n'}", "hf/../elsewhere", "hf/escape", f"hf/{elsewhere}", "hf/", "hf/a\x00b"):
        with pytest.raises(ModelPathError):
            model_path(root, bad)
    monkeypatch.setenv("TUNELOG_MODEL_ROOTS", f"{extra}{os.pathsep}{tmp_path / 'absent'}")
    assert model_path(root, f"hf/{extra / 'n'}") == (extra / "n").resolve()


# ---- downloads and pages -----------------------------------------------------------------------------------
def multipart_with_filename(filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body carrying the filename byte for byte (clients escape quotes; raw senders need not)."""
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"').encode()
    body = (b"--B0UNDARY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + quoted + b"\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
            b"--B0UNDARY\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--B0UNDARY--\r\n")
    return body, "multipart/form-data; boundary=B0UNDARY"


@pytest.mark.parametrize("filename", [
    'a"; filename*=UTF-8\'\'evil.exe; x="y.jsonl',  # parameter injection into Content-Disposition
    "résumé 📚 данные.jsonl",  # non-ASCII: an ASCII fallback plus RFC 5987 filename*
    "tab\there\x01\x7f.jsonl",  # control characters are dropped at upload
    "back\\slash;semi,comma.jsonl",
])
def test_download_names_are_quoted_safely(stack, keys, filename):
    from werkzeug.http import parse_options_header

    k = keys["trainer"]
    body, ctype = multipart_with_filename(filename, GOOD)
    r = send(stack, k, "POST", "/v1/files", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    stored = r.json()["filename"]
    assert not any(ord(c) < 32 or ord(c) == 127 for c in stored), stored
    r = stack.http("GET", f"/v1/files/{r.json()['id']}/content", k["key"])
    assert r.status_code == 200 and r.content == GOOD
    header = r.raw.headers["Content-Disposition"]  # as sent (latin-1 on the wire)
    assert "\r" not in header and "\n" not in header
    value, params = parse_options_header(header)
    assert value == "attachment" and params == {"filename": stored}, header


def test_chunks_are_paginated(stack, keys):
    """GET /api/documents/<id>/chunks pages through the read model with limit/after. The chunks are written
    into the read model here (a document row and its chunks, removed afterwards): embedding is the workers'
    part, tested with the knowledge base, and this checks only the API's paging."""
    k = keys["trainer"]
    project = stack.sql("SELECT project FROM api_keys WHERE id = %s", (k["id"],))[0]["project"]
    doc, n = "doc-paging" + uuid.uuid4().hex[:14], 23
    zero = "[" + ",".join(["0"] * 384) + "]"
    stack.sql("INSERT INTO documents (id, project, title, filename, media_type, bytes, sha256, text_sha256, status, "
              "n_chunks, created_at, indexed_at, seq) VALUES (%s, %s, 'paging', NULL, 'text/plain', 1, 'x', 'x', "
              "'indexed', %s, 0, 0, 0)", (doc, project, n))
    try:
        for i in range(n):
            stack.sql("INSERT INTO chunks (id, document_id, project, idx, text, char_start, char_end, embedding) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::vector)",
                      (f"{doc}-{i}", doc, project, i, f"chunk {i}", i * 10, i * 10 + 9, zero))
        seen, after, pages = [], None, 0
        while True:
            q = f"?limit=5&after={after}" if after is not None else "?limit=5"
            page = send(stack, k, "GET", f"/api/documents/{doc}/chunks{q}").json()
            assert len(page["data"]) <= 5
            seen += [c["idx"] for c in page["data"]]
            pages += 1
            if not page["has_more"]:
                assert page["next_after"] == (seen[-1] if page["data"] else None)
                break
            after = page["next_after"]
        assert seen == list(range(n)) and pages == 5
        assert [c["idx"] for c in send(stack, k, "GET", f"/api/documents/{doc}/chunks").json()["data"]] == seen
        assert send(stack, k, "GET", f"/api/documents/{doc}/chunks?after=22").json() == {
            "object": "list", "data": [], "has_more": False, "next_after": None}
        for q in ("?limit=1001", "?limit=0", "?after=-1", "?after=x", "?after=1.5"):
            r = send(stack, k, "GET", f"/api/documents/{doc}/chunks{q}")
            assert r.status_code == 400, (q, r.text)
        other = stack.new_key("admin")["key"]
        assert stack.http("GET", f"/api/documents/{doc}/chunks", other).status_code == 404
    finally:
        stack.sql("DELETE FROM chunks WHERE document_id = %s", (doc,))
        stack.sql("DELETE FROM documents WHERE id = %s", (doc,))
