"""The dashboard in a real headless Chromium (Selenium and the system's chromedriver) against a
real mesh — orchestrator, projector, a slow simulated worker and the gateway as child
processes: sign in with a key and with a password, see the nodes, submit a job and watch its tokens arrive over the WebSocket,
filter the jobs, cancel a slow job, read /openapi; no page requests anything outside the
gateway. It saves a screenshot to test-artifacts/dashboard.png (`just test-browser`)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from events.bus import Bus
from services.accounts.keys import create_key
from services.nats_server import free_port
from services.settings import Settings
from tests.mesh import spawn, wait_ready, wait_until

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no chromium/chromedriver on this machine (`just test-browser` installs "
        "Debian's chromium and chromium-driver)",
    ),
]

T = TypeVar("T")


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium that keeps a log of every request its pages make."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    assert CHROMIUM is not None
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root (containers, CI)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1100",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, check: Callable[[Any], T], what: str, timeout_s: float = 45) -> T:
    """Poll `check(driver)` until it is truthy; fail saying `what` (and the console) if not."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(check)  # type: ignore[no-any-return]
    except Exception as exc:
        console = [e["message"] for e in driver.get_log("browser")]
        shown = {i: text_of(driver, i) for i in ("job-status", "job-stream-note", "job-output")}
        raise AssertionError(
            f"timed out waiting for {what}; the page shows {shown}; console: {console}"
        ) from exc


def text_of(driver: Any, element_id: str) -> str:
    text: str = driver.execute_script(f"return document.getElementById('{element_id}').textContent")
    return text


def requested(driver: Any) -> list[str]:
    """Every URL the browser's pages requested since the last call (HTTP and WebSocket)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    return urls


def external(urls: list[str], port: int) -> list[str]:
    """The URLs that leave the gateway's origin (data: and blob: stay in the page)."""
    ours = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/")
    return [u for u in urls if not u.startswith((*ours, "data:", "blob:"))]


def submit(driver: Any, prompt: str, max_tokens: int) -> str:
    """Submit a job from the form; the id the job panel then shows."""
    from selenium.webdriver.common.by import By

    before = text_of(driver, "job-id")
    prompt_box = driver.find_element(By.ID, "job-prompt")
    prompt_box.clear()
    prompt_box.send_keys(prompt)
    tokens = driver.find_element(By.ID, "job-max-tokens")
    tokens.clear()
    tokens.send_keys(str(max_tokens))
    driver.find_element(By.ID, "job-submit").click()
    return until(
        driver, lambda d: (t := text_of(d, "job-id")) != before and t, "the job to be submitted"
    )


async def test_the_dashboard_in_a_real_browser(bus: Bus, settings: Settings, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    port = free_port()
    s = settings.model_copy(update={"gateway_port": port})
    _, admin = await create_key(bus, principal_id="ada", tenant="acme", roles=("admin",), actor="t")
    # a slow worker: tokens arrive a few per second, so the page sees them arrive and a job
    # can be cancelled while it runs
    worker = {
        "DIM_NODE_ID": "w1",
        "DIM_MODELS": "sim-small",
        "DIM_SIM_TOKENS_PER_S": "3",
        "DIM_SIM_TTFT_MS": "300",
    }
    base = f"http://127.0.0.1:{port}"
    with (
        spawn(s, "orchestrator"),
        spawn(s, "projector"),
        spawn(s, "worker", **worker),
        spawn(s, "gateway"),
    ):
        await wait_ready(base)
        http = httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {admin}"})

        async def served() -> bool:
            r = await http.get("/v1/models")
            return r.status_code == 200 and bool(r.json()["data"])

        await wait_until(served, what="the worker in the gateway's view")

        # sign in with the admin's key: the nodes appear
        browser.get(f"{base}/ui")
        browser.find_element(By.ID, "key-input").send_keys(admin)
        browser.find_element(By.ID, "key-signin").click()
        until(browser, lambda d: "ada" in text_of(d, "who"), "the sign-in")
        stored = browser.execute_script("return sessionStorage.getItem('dim.credentials')")
        assert admin in stored
        assert browser.execute_script("return localStorage.length") == 0
        node = until(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#nodes-table tr[data-node='w1']"),
            "node w1 in the nodes table",
        )[0]
        assert "sim-small" in node.text and "live" in node.text and "ago" in node.text

        # a completion streamed through the gateway, so the TTFT chart has something to show
        body = {
            "model": "sim-small",
            "stream": True,
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "hello"}],
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            _ = [line async for line in r.aiter_lines()]

        # a job from the form: its tokens arrive live, then it completes
        until(
            browser,
            lambda d: (
                "sim-small" in [o.text for o in Select(d.find_element(By.ID, "job-model")).options]
            ),
            "the models in the job form",
        )
        done_id = submit(browser, "Tell me about event sourcing.", 12)
        lengths: list[int] = []

        def finished(d: Any) -> bool:
            n = len(text_of(d, "job-output"))
            if not lengths or n != lengths[-1]:
                lengths.append(n)
            return text_of(d, "job-status") == "completed"

        until(browser, finished, "the job to complete")
        assert len([n for n in lengths if n > 0]) >= 2, f"tokens came at once: {lengths}"
        job: dict[str, Any] = {}

        async def projected() -> bool:  # the job view lags the stream by a moment
            nonlocal job
            job = (await http.get(f"/v1/jobs/{done_id}")).json()
            return bool(job["status"] == "completed")

        await wait_until(projected, what="the job view to say completed")
        until(
            browser,
            lambda d: text_of(d, "job-output") == job["output"],
            f"the whole output {job['output']!r}",
        )
        assert job["status"] == "completed" and job["usage"]["completion_tokens"] == 12
        until(browser, lambda d: "job.completed" in text_of(d, "timeline"), "the timeline's end")
        assert "job.submitted" in text_of(browser, "timeline")

        # a slow job, cancelled from the page while its tokens arrive
        slow_id = submit(browser, "Write a long story about a mesh.", 500)
        until(browser, lambda d: len(text_of(d, "job-output")) > 0, "the slow job's first tokens")
        browser.find_element(By.ID, "job-cancel").click()
        until(browser, lambda d: text_of(d, "job-status") == "cancelled", "the cancellation")
        until(browser, lambda d: "job.cancelled" in text_of(d, "timeline"), "job.cancelled")

        async def cancelled() -> bool:
            slow = (await http.get(f"/v1/jobs/{slow_id}")).json()
            return bool(slow["status"] == "cancelled" and slow["usage"]["completion_tokens"] < 500)

        await wait_until(cancelled, what="the job view to say cancelled")

        # filters: only completed jobs, then every job again
        Select(browser.find_element(By.ID, "filter-status")).select_by_visible_text("completed")

        def listed(d: Any) -> dict[str, str]:
            """Job id -> status, as the jobs table shows them (read at once: it is redrawn)."""
            rows: dict[str, str] = d.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('#jobs-table tbody tr')]"
                ".map((r) => [r.dataset.job, r.cells[1].textContent]))"
            )
            return rows

        def only_completed(d: Any) -> bool:
            jobs = listed(d)  # the streamed completion above is a completed job too
            return done_id in jobs and slow_id not in jobs and set(jobs.values()) == {"completed"}

        until(browser, only_completed, "the completed jobs only")
        Select(browser.find_element(By.ID, "filter-status")).select_by_visible_text("any")
        until(browser, lambda d: {done_id, slow_id} <= listed(d).keys(), "every job again")

        # back to the completed job for the picture: nodes, charts, jobs, its tokens
        browser.find_element(By.CSS_SELECTOR, f"#jobs-table tr[data-job='{done_id}']").click()
        until(browser, lambda d: text_of(d, "job-output") == job["output"], "the job's tokens")
        until(browser, lambda d: text_of(d, "job-status") == "completed", "its status")
        until(
            browser,
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#chart-ttft path.line")
                and d.find_elements(By.CSS_SELECTOR, "#chart-rps path.line")
            ),
            "the charts",
        )
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
        await asyncio.sleep(0.5)  # the pointer off the table, the last frame painted
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
        assert external(requested(browser), port) == []

        # the API docs render from the vendored Redoc, with nothing fetched from elsewhere
        browser.get(f"{base}/openapi")
        until(
            browser,
            lambda d: "submitJob" in d.page_source or "Submit a job" in d.page_source,
            "Redoc to render the API",
        )
        urls = requested(browser)
        assert any(u.endswith("/ui/static/vendor/redoc/redoc.standalone.js") for u in urls)
        assert external(urls, port) == []
        # neither page broke its content security policy (it would have, to load from elsewhere)
        console = [e["message"] for e in browser.get_log("browser")]
        assert not [m for m in console if "Content Security Policy" in m], console

        # a member who logs in with a password: a session; no nodes (admins only), said plainly
        account = {
            "email": "mel@acme.example",
            "password": "a long enough password",
            "role": "member",
        }
        assert (await http.post("/v1/auth/register", json=account)).status_code == 201
        browser.get(f"{base}/ui")
        until(browser, lambda d: "ada" in text_of(d, "who"), "the sign-in kept in this tab")
        browser.find_element(By.ID, "signout").click()
        until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "signed out")
        assert browser.execute_script("return sessionStorage.length") == 0
        browser.find_element(By.ID, "login-email").send_keys(account["email"])
        browser.find_element(By.ID, "login-password").send_keys(account["password"])
        browser.find_element(By.ID, "login-signin").click()
        until(browser, lambda d: "session" in text_of(d, "who"), "the login")
        stored = json.loads(
            browser.execute_script("return sessionStorage.getItem('dim.credentials')")
        )
        assert stored["kind"] == "session" and stored["refresh"] and stored["token"].count(".") == 2
        until(
            browser,
            lambda d: "for admins" in text_of(d, "nodes-error"),
            "the member told that nodes are for admins",
        )
        assert "member" in text_of(browser, "nodes-error")
        until(browser, lambda d: not listed(d), "the member's own (empty) job list")
        await http.aclose()
