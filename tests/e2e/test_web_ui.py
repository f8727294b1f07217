"""The web UI in headless Chromium (Debian's chromium, driven by Playwright): chat with a streamed
answer, and a running job's loss chart updating from its event stream."""
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import DATA

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test installs it when it can use apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(120_000)
    yield pg
    context.close()


def login(page, stack, key: str, hash_: str = "#chat"):
    page.goto(stack.base_url + "/" + hash_)
    page.fill("#api-key", key)
    page.click("#key-form button")


def test_chat_in_the_browser_streams_the_answer_with_sources(page, stack, tmp_path):
    key = stack.new_key("trainer")
    r = stack.http("POST", "/api/documents", key["key"], json={
        "title": "Fractions", "text": "A fraction has a numerator on top and a denominator below. " * 10})
    doc = r.json()["id"]
    deadline = time.monotonic() + 60
    while stack.http("GET", f"/api/documents/{doc}", key["key"]).json()["status"] == "processing":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    login(page, stack, key["key"])
    page.wait_for_selector("#chat-model option[value=tutor]", state="attached")
    page.fill("#chat-input", "What is the top number of a fraction called?")
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant[data-done=true]")
    answer = page.inner_text(".msg.assistant .text")
    assert answer.strip()
    assert "Fractions" in page.inner_text(".sources")
    page.screenshot(path=str(tmp_path / "chat.png"))
    assert page.inner_text("#error") == ""


def test_a_running_jobs_chart_updates_live(page, stack):
    key = stack.new_key("trainer")
    k = key["key"]
    fid = stack.http("POST", "/v1/files", k, files={"file": ("t.jsonl", (DATA / "tiny_train.jsonl").read_bytes())},
                     data={"purpose": "fine-tune"}).json()["id"]
    job = stack.http("POST", "/v1/fine_tuning/jobs", k, json={
        "model": "smollm2-135m-instruct", "training_file": fid,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 10, "batch_size": 2}}}}).json()
    try:
        login(page, stack, k, "#jobs")
        page.wait_for_selector(f"tr[data-job='{job['id']}']")
        page.click(f"tr[data-job='{job['id']}']")
        # functions, not expression strings: Playwright eval()s those in the page, which its CSP forbids
        page.wait_for_function("() => document.querySelector('#job-status').textContent === 'running'")
        page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points || 0) >= 1")
        first = int(page.get_attribute("#loss-chart", "data-points"))
        page.wait_for_function(f"() => Number(document.querySelector('#loss-chart').dataset.points) >= {first + 2}")
        assert page.locator("#loss-chart polyline.train").count() == 1
        assert "Step" in page.inner_text("#job-events")
    finally:
        stack.http("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", k)
        stack.wait_job(k, job["id"], {"cancelled", "succeeded", "failed"}, timeout=60)


def test_the_key_is_kept_for_the_tab_unless_remembered_and_can_be_forgotten(page, stack):
    k = stack.new_key("trainer")["key"]

    def stored(pg=page):
        return pg.evaluate("() => [sessionStorage.getItem('tunelog-key'), localStorage.getItem('tunelog-key')]")

    login(page, stack, k, "#jobs")
    page.wait_for_selector("#jobs-table")
    assert stored() == [k, None]  # this tab only: a shared classroom computer forgets it with the tab
    other = page.context.new_page()
    other.goto(stack.base_url + "/#chat")
    assert other.input_value("#api-key") == "" and "Enter an API key" in other.inner_text("#error")

    # ids of dots only are no ids: #jobs/.. would send the key to other paths
    paths: list[str] = []
    page.on("request", lambda r: paths.append(urlparse(r.url).path))
    for bad in ("..", "%2E%2E", "."):
        page.evaluate("(h) => { location.hash = h; }", "#jobs/" + bad)
        page.wait_for_timeout(300)
    assert page.is_hidden("#job-detail")
    assert paths and set(paths) <= {"/v1/fine_tuning/jobs"}, paths

    # remembered on this device: another tab has it; "Forget key" clears both stores
    page.check("#remember-key")
    page.click("#key-form button")
    assert stored() == [None, k]
    other.reload()
    assert other.input_value("#api-key") == k and other.is_checked("#remember-key")
    with page.expect_navigation():
        page.click("#forget-key")
    assert stored() == [None, None]
    assert page.input_value("#api-key") == "" and not page.is_checked("#remember-key")
    assert "Enter an API key" in page.inner_text("#error")
    other.close()


def test_the_loss_chart_draws_a_long_job_with_bounded_points(page, stack):
    login(page, stack, stack.new_key("trainer")["key"], "#jobs")
    page.wait_for_selector("#jobs-table")
    # 200,000 points (Math.max(...points) threw past about 100,000): drawn from at most about 1,000 of them
    drawn = page.evaluate("""() => {
        const points = Array.from({ length: 200000 }, (_, i) => ({ step: i + 1, train: 1 / (i + 1), valid: null }));
        drawChart(points);
        const chart = document.querySelector('#loss-chart');
        return { n: chart.dataset.points, coords: chart.querySelector('polyline.train').getAttribute('points')
          .split(' ').length, dots: chart.querySelectorAll('circle').length };
    }""")
    assert drawn["n"] == "200000" and 1000 <= drawn["coords"] <= 1001 and drawn["dots"] == 0
