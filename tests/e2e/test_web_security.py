"""Issue 6: stored XSS in the web UI. A trainer plants markup in everything the UI shows (document
titles, an alias reason, a job's metadata, chat sources); an admin then opens every page in
headless Chromium, and none of it may run or be parsed as HTML. Every response carries a strict CSP and
the other security headers, and the UI's own files contain no HTML-parsing sinks or inline code."""
import os
import re
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DATA
from tests.e2e.test_web_ui import browser, login  # noqa: F401 - the browser fixture is used by name

pytestmark = pytest.mark.slow
STATIC = Path(__file__).resolve().parents[2] / "api" / "web" / "static"

# Each payload sets its own number, so a failure says which one ran.
IMG_TITLE = '<img src=x onerror="window.__xss=1">'
SCRIPT_TITLE = "<script>window.__xss=2</script>"
REASON = 'trusted <img src=x onerror="window.__xss=3"> because <b>bold</b>'
META = '<img src=y onerror="window.__xss=4">'
META_KEY = "<i>note</i>"
DOC_TEXT = ('Photosynthesis: plants turn sunlight, water and carbon dioxide into sugar and oxygen in the '
            'chloroplasts. <img src=q onerror="window.__xss=6"> ') * 6

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@pytest.fixture(scope="module")
def hostile(stack):
    """One project, filled by its trainer with hostile strings; its admin key is the victim's."""
    project = "xss-" + os.urandom(4).hex()
    admin = stack.new_key("admin", project)["key"]
    trainer = stack.new_key("trainer", project)["key"]

    docs = []
    for title in (IMG_TITLE, SCRIPT_TITLE):
        r = stack.http("POST", "/api/documents", trainer, json={"title": title, "text": DOC_TEXT})
        assert r.status_code in (200, 201, 202), r.text
        docs.append(r.json()["id"])
    deadline = time.monotonic() + 90
    for doc in docs:
        while stack.http("GET", f"/api/documents/{doc}", trainer).json()["status"] == "processing":
            assert time.monotonic() < deadline, "the documents were not indexed in time"
            time.sleep(0.3)

    r = stack.http("POST", "/api/aliases/tutor", trainer, json={"model": "smollm2-135m-instruct", "reason": REASON})
    assert r.status_code == 200, r.text

    # A job with markup in its metadata (the API takes any string values there; the suffix is restricted
    # to [A-Za-z0-9_-] and hf/<path> models to the server's model folders, so neither can carry any).
    train = (DATA / "tiny_train.jsonl").read_bytes()
    fid = stack.http("POST", "/v1/files", trainer, files={"file": ("t.jsonl", train)},
                     data={"purpose": "fine-tune"}).json()["id"]
    r = stack.http("POST", "/v1/fine_tuning/jobs", trainer, json={
        "model": "smollm2-135m-instruct", "training_file": fid, "suffix": "xss",
        "metadata": {"note": META, META_KEY: META},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}}})
    assert r.status_code == 200, r.text
    job = r.json()["id"]
    stack.http("POST", f"/v1/fine_tuning/jobs/{job}/cancel", trainer)  # its fields are what matter, not training
    stack.wait_job(trainer, job, {"failed", "cancelled", "succeeded"}, timeout=120)
    return {"admin": admin, "trainer": trainer, "job": job, "docs": docs}


@pytest.fixture
def page(browser, stack):  # noqa: F811 - browser is the imported fixture
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.problems = []  # CSP violations reported on the console, and uncaught errors

    def on_console(msg):
        text = msg.text
        if msg.type == "error" and ("Content Security Policy" in text or "Refused to" in text):
            pg.problems.append("console: " + text)

    pg.on("console", on_console)
    pg.on("pageerror", lambda err: pg.problems.append(f"pageerror: {err}"))
    yield pg
    context.close()


def assert_safe(page):
    """Nothing planted ran, no element was made from it, and our own code broke no CSP rule."""
    page.wait_for_timeout(700)  # let a planted <img onerror> (src=x: a quick 404) fire if it is there
    assert page.evaluate("typeof window.__xss") == "undefined", f"planted script ran: {page.evaluate('window.__xss')}"
    assert page.locator("main img, main script, main i").count() == 0, "planted markup became elements"
    assert page.problems == []
    assert page.inner_text("#error") == ""


def text_of(page, selector: str) -> str:
    return page.evaluate("(s) => document.querySelector(s).textContent", selector)


def test_documents_page_shows_hostile_titles_as_text(page, stack, hostile):
    login(page, stack, hostile["admin"], "#documents")
    page.wait_for_function("() => document.querySelectorAll('#docs-table tbody tr').length >= 2")
    assert_safe(page)
    table = text_of(page, "#docs-table tbody")
    assert IMG_TITLE in table and SCRIPT_TITLE in table


def test_documents_page_uploads_a_hostile_filename_and_deletes_it(page, stack, hostile, tmp_path):
    # the title of an uploaded file is its name's stem (no quotes: browsers escape them in a filename)
    upload = tmp_path / "<img src=u onerror=window.__xss=7>.txt"
    upload.write_text("A document uploaded through the browser, with a hostile file name. " * 5)
    login(page, stack, hostile["admin"], "#documents")
    page.wait_for_function("() => document.querySelectorAll('#docs-table tbody tr').length >= 2")
    page.set_input_files("#doc-file", str(upload))
    page.click("#doc-form button")
    page.wait_for_function("() => document.querySelectorAll('#docs-table tbody tr').length >= 3")
    assert_safe(page)
    docs = stack.http("GET", "/api/documents", hostile["admin"]).json()["data"]
    new = [d for d in docs if d["id"] not in hostile["docs"]]
    assert len(new) == 1 and "<img" in new[0]["title"], new
    assert new[0]["title"] in text_of(page, f"tr[data-doc='{new[0]['id']}']")

    page.click(f"tr[data-doc='{new[0]['id']}'] button")
    page.wait_for_function("() => document.querySelectorAll('#docs-table tbody tr').length === 2")
    assert_safe(page)
    assert stack.http("GET", f"/api/documents/{new[0]['id']}", hostile["admin"]).status_code == 404


def test_models_page_shows_the_alias_reason_as_text(page, stack, hostile):
    login(page, stack, hostile["admin"], "#models")
    page.wait_for_function("() => document.querySelectorAll('#alias-history li').length >= 2")
    page.wait_for_function("() => document.querySelectorAll('#models-table tbody tr').length >= 1")
    assert_safe(page)
    assert REASON in text_of(page, "#alias-history")

    # promoting from the page itself, with markup in the reason, shows it as text as well
    reason = 'from the UI <svg onload="window.__xss=8"></svg>'
    page.select_option("#promote-model", "smollm2-135m-instruct")
    page.fill("#promote-reason", reason)
    page.click("#promote-form button")
    page.wait_for_function("() => document.querySelector('#promote-result').textContent.includes('tutor now points')")
    page.wait_for_function("() => document.querySelectorAll('#alias-history li').length >= 3")
    assert_safe(page)
    assert page.locator("main svg:not(#loss-chart)").count() == 0
    assert reason in text_of(page, "#alias-history")


def test_jobs_list_and_job_page_show_hostile_metadata_as_text(page, stack, hostile):
    job = hostile["job"]
    login(page, stack, hostile["admin"], "#jobs")
    row = f"tr[data-job='{job}']"
    page.wait_for_selector(row)
    assert_safe(page)
    assert "smollm2-135m-instruct" in text_of(page, row)

    page.click(row)
    page.wait_for_function("() => document.querySelector('#job-status').textContent !== ''")
    page.wait_for_function("() => document.querySelectorAll('#job-info dt').length >= 3")
    page.wait_for_function("() => document.querySelectorAll('#job-events li').length >= 1")
    assert_safe(page)
    info = text_of(page, "#job-info")
    assert "smollm2-135m-instruct" in info
    assert META in info and META_KEY in info
    error = stack.http("GET", f"/v1/fine_tuning/jobs/{job}", hostile["admin"]).json()["error"]
    if error:
        page.wait_for_selector("#job-error")
        assert error["message"] in text_of(page, "#job-error")


def test_chat_shows_hostile_sources_and_answer_as_text(page, stack, hostile):
    login(page, stack, hostile["admin"], "#chat")
    page.wait_for_selector("#chat-model option[value=tutor]", state="attached")
    page.fill("#chat-input", "What do plants make in the chloroplasts?")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelector('.msg.assistant[data-done=true]') || "
                           "document.querySelector('#error').textContent", timeout=180_000)
    assert_safe(page)
    sources = text_of(page, ".sources")
    assert IMG_TITLE in sources or SCRIPT_TITLE in sources
    assert page.locator(".msg.assistant *:not(.text)").count() == 0  # the answer is text, whatever it says


def test_every_response_carries_the_security_headers(stack, hostile):
    admin = hostile["admin"]
    responses = {
        "/": stack.http("GET", "/"),
        "/ui/app.js": stack.http("GET", "/ui/app.js"),
        "/ui/style.css": stack.http("GET", "/ui/style.css"),
        "/v1/models": stack.http("GET", "/v1/models", admin),
        "/v1/models (no key)": stack.http("GET", "/v1/models"),
        "/healthz": stack.http("GET", "/healthz"),
        "404": stack.http("GET", "/no/such/page", admin),
        "404 job": stack.http("GET", "/v1/fine_tuning/jobs/ftjob-nope", admin),
    }
    for name, r in responses.items():
        for header, value in HEADERS.items():
            assert r.headers.get(header) == value, (name, header, r.headers.get(header))
    js_type = responses["/ui/app.js"].headers["Content-Type"].split(";")[0]
    assert js_type in ("text/javascript", "application/javascript")
    assert responses["/v1/models"].json()["data"]  # JSON still JSON
    assert responses["404"].status_code == 404 and "error" in responses["404"].json()
    assert responses["/v1/models (no key)"].status_code == 401

    # the job's SSE feed: still an event stream, with the headers, ending with the job
    with requests.get(f"{stack.base_url}/api/jobs/{hostile['job']}/stream", stream=True, timeout=60,
                      headers={"Authorization": f"Bearer {admin}"}) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for header, value in HEADERS.items():
            assert r.headers.get(header) == value, ("stream", header)
        body = b""
        for chunk in r.iter_content(chunk_size=None):
            body += chunk
            if b"event: end" in body:
                break
    assert b"event: job" in body and b"event: end" in body


def test_the_ui_files_have_no_html_sinks_and_no_inline_code():
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "javascript:", "srcdoc", "createContextualFragment", "DOMParser"):
        assert sink not in js, f"app.js uses {sink}"
    assert not re.search(r"set(Timeout|Interval)\(\s*['\"`]", js), "a string passed to setTimeout/setInterval"

    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<style", html, re.I), "inline <style>"
    assert not re.search(r"\sstyle\s*=", html, re.I), "style= attribute"
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler"
    assert not re.search(r"javascript:", html, re.I)
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.I | re.S)
    assert scripts, "the page loads its script"
    for attrs, body in scripts:
        assert re.search(r"\bsrc\s*=\s*\"/ui/", attrs) and not body.strip(), "inline <script>"
