"""The web UI in a real browser: Debian's headless Chromium driven by playwright, against a real
``kitaru server start`` process and the quickstart run as its own process.

Screenshots of each step are kept under ``$KITARU_TEST_ARTIFACTS/<test>`` (or the test's tmp
directory); each test prints where."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kitaru
from kitaru import checkpoint, flow
from tests._services import missing
from tests.server.conftest import ServerProcess, create_key, run_flow, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install chromium chromium-driver"
TIMEOUT_MS = 60_000


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where this test's screenshots go (kept as test artifacts), printed for whoever looks."""
    root = os.environ.get("KITARU_TEST_ARTIFACTS")
    where = Path(root) / request.node.name if root else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    print(f"screenshots of {request.node.name}: {where}")
    return where


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian (playwright's own browser download is not reachable)."""
    if not CHROMIUM.exists():
        missing("chromium", INSTALL)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright", "uv sync --locked (it is a dev dependency)")
    args = [
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    if os.geteuid() == 0:
        args.insert(0, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=args, timeout=TIMEOUT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


def png(width: int, height: int) -> bytes:
    """A real PNG image (one red pixel per row, made here: no image library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@checkpoint
def caption(word: str) -> str:
    return f"a picture of {word}"


@checkpoint
def render(text: str) -> bytes:
    return png(3, 2)


@flow
def pictures(word: str) -> str:
    """A flow with an image output (raw bytes) and a JSON one, run by the tests below."""
    text = caption(word)
    render(text)
    kitaru.save("settings", {"word": word, "size": [3, 2]}, type="config")
    return text


def run_pictures(env: dict[str, str], word: str) -> str:
    code = f"from tests.server.test_ui_browser import pictures; print(pictures.run({word!r}).exec_id)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def new_page(browser: Any, **options: Any) -> Any:
    page = browser.new_page(**options)
    page.set_default_timeout(TIMEOUT_MS)
    return page


def start_quickstart(env: dict[str, str]) -> str:
    """Run examples/quickstart.py as a user would; it stops at its approval wait."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "browser tests"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    match = re.search(r"execution (\w+) is waiting for approval", out.stdout)
    assert match, out.stdout
    return match.group(1)


def log_in(page: Any, server: ServerProcess, key: str) -> None:
    page.goto(server.url + "/")
    page.wait_for_url(re.compile(r"/ui/login"))
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#executions")


def test_approve_the_quickstart_in_the_browser(
    browser: Any,
    server: ServerProcess,
    kitaru_cli: list[str],
    server_env: dict[str, str],
    sqlite_state: str,
    shots: Path,
) -> None:
    exec_id = start_quickstart(server_env)
    key = create_key(kitaru_cli, server_env, sqlite_state, "approver", "answer")
    api = server.client(key)
    page = new_page(browser, viewport={"width": 1366, "height": 900})

    # Log in with the key: the session cookie is HttpOnly (the page's script cannot read it).
    log_in(page, server, key)
    assert page.evaluate("document.cookie") == ""

    # The list shows the quickstart's execution waiting; the status filter keeps it.
    row = page.locator(f"tr[data-exec-id='{exec_id}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "waiting"
    page.select_option("#status", "waiting")
    page.wait_for_url(re.compile(r"status=waiting"))
    page.locator(f"tr[data-exec-id='{exec_id}'][data-status='waiting']").wait_for()
    page.screenshot(path=str(shots / "1-executions.png"), full_page=True)

    # Its page: the wait's question and a form built from its schema (a boolean).
    row.locator("a").click()
    form = page.locator("form.answer[data-wait='approve_draft']")
    form.wait_for()
    assert "Publish this draft?" in form.locator(".question").inner_text()
    assert form.locator("input[type=radio]").count() == 2
    page.screenshot(path=str(shots / "2-waiting.png"), full_page=True)

    # A bad answer: the server's validation error is shown in the form, and the wait stays open.
    form.locator(".raw-toggle").click()
    form.locator("textarea.raw-answer").fill('"maybe"')
    form.locator("button[type=submit]").click()
    problem = form.locator(".answer-error .error")
    problem.wait_for()
    assert "maybe" in problem.inner_text()
    page.screenshot(path=str(shots / "3-bad-answer.png"), full_page=True)
    execution = api.get(f"/api/v1/executions/{exec_id}").json()
    assert execution["status"] == "waiting"
    assert [w["status"] for w in execution["waits"]] == ["open"]
    assert form.is_visible()  # still there to answer again

    # A good answer through the form: the execution completes and the page follows it.
    form.locator(".raw-toggle").click()
    form.locator("input[type=radio][value=true]").check()
    form.locator("button[type=submit]").click()
    page.locator("[data-answered='approve_draft']").wait_for()
    page.locator("#summary[data-status='completed']").wait_for()
    execution = api.get(f"/api/v1/executions/{exec_id}").json()
    assert execution["status"] == "completed"
    assert [w["status"] for w in execution["waits"]] == ["answered"]

    # The timeline shows every checkpoint once, each completed, and the answered wait.
    rows = page.locator("#timeline .checkpoint-row")
    calls = [rows.nth(i).get_attribute("data-call-id") for i in range(rows.count())]
    assert calls == ["research", "draft", "publish"]
    assert {rows.nth(i).get_attribute("data-status") for i in range(rows.count())} == {"completed"}
    assert (
        page.locator("#timeline .wait-row[data-wait='approve_draft']").get_attribute("data-status")
        == "answered"
    )
    page.screenshot(path=str(shots / "4-completed.png"), full_page=True)
    api.close()


def test_execution_page_shows_logs_artifacts_and_lineage_on_a_phone(
    browser: Any,
    server: ServerProcess,
    kitaru_cli: list[str],
    server_env: dict[str, str],
    sqlite_state: str,
    shots: Path,
) -> None:
    exec_id = run_flow(server_env, "approve")  # prints "researching ...", then waits on a bool
    key = create_key(kitaru_cli, server_env, sqlite_state, "viewer", "read")
    page = new_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    log_in(page, server, key)
    page.goto(f"{server.url}/ui/executions/{exec_id}")

    # Logs arrive through the server-sent event stream.
    page.locator("#logs").get_by_text("researching").wait_for()

    # Artifacts: the JSON-stored output previews as text, without any unpickling.
    artifact = page.locator("#artifacts details[data-artifact='research']")
    artifact.locator("summary").click()
    assert "brief on" in artifact.locator(".preview-text").inner_text()

    # The lineage graph is drawn: the checkpoint and the wait as nodes of an SVG.
    page.locator("#graph svg g.node[data-node='research']").wait_for()
    assert page.locator("#graph svg g.node.wait").count() == 1

    # A read-only key sees the wait but its form says it cannot answer.
    form = page.locator("form.answer[data-wait='approve']")
    assert form.locator("button[type=submit]").is_disabled()

    # Usable on a phone: nothing wider than the screen but the scrollable graph.
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 390, f"the page is {wide}px wide on a 390px screen"
    page.screenshot(path=str(shots / "phone-execution.png"), full_page=True)


def test_forms_carry_the_csrf_token(
    browser: Any, server: ServerProcess, kitaru_cli: list[str], server_env: dict[str, str], sqlite_state: str
) -> None:
    """The page's answers go through because they carry the session's token; the same post
    from the same browser session without it is refused, and the wait stays open."""
    exec_id = run_flow(server_env, "approve")
    key = create_key(kitaru_cli, server_env, sqlite_state, "approver", "answer")
    page = new_page(browser)
    log_in(page, server, key)
    status = page.evaluate(
        """async (id) => (await fetch(`/api/v1/executions/${id}/waits/approve`, {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({value: true})})).status""",
        exec_id,
    )
    assert status == 403
    with server.client(create_key(kitaru_cli, server_env, sqlite_state, "reader", "read")) as c:
        assert c.get(f"/api/v1/executions/{exec_id}").json()["status"] == "waiting"
    page.goto(f"{server.url}/ui/executions/{exec_id}")
    form = page.locator("form.answer[data-wait='approve']")
    token = form.locator("input[name=csrf_token]").get_attribute("value")
    session = page.evaluate("async () => (await fetch('/api/v1/session')).json()")
    assert token and token == session["csrf_token"]
    form.locator("input[type=radio][value=false]").check()
    form.locator("button[type=submit]").click()
    page.locator("[data-answered='approve']").wait_for()
    with server.client(create_key(kitaru_cli, server_env, sqlite_state, "reader2", "read")) as c:
        wait_until(
            lambda: c.get(f"/api/v1/executions/{exec_id}").json()["status"] == "completed",
            what="the answered execution completing",
        )


def test_image_preview_replay_and_diff(
    browser: Any,
    server: ServerProcess,
    kitaru_cli: list[str],
    server_env: dict[str, str],
    sqlite_state: str,
    shots: Path,
) -> None:
    exec_id = run_pictures(server_env, "cat")
    key = create_key(kitaru_cli, server_env, sqlite_state, "operator", "invoke")
    page = new_page(browser, viewport={"width": 1280, "height": 900})
    log_in(page, server, key)
    page.goto(f"{server.url}/ui/executions/{exec_id}")
    page.locator("#summary[data-status='completed']").wait_for()

    # An image output (raw bytes) is shown as the image it is; a JSON value as JSON.
    image = page.locator("#artifacts details[data-artifact='render']")
    image.locator("summary").click()
    picture = image.locator("img.preview-image")
    picture.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
    assert picture.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [3, 2]
    settings = page.locator("#artifacts details[data-artifact='settings']")
    settings.locator("summary").click()
    assert '"size"' in settings.locator(".preview-text").inner_text()

    # A replay with a bad input is refused inline, and nothing is created.
    page.select_option("#replay-from", "caption")
    page.fill("#replay-args", '{"nope": 1}')
    page.click("#replay button[type=submit]")
    page.locator("#replay .error").wait_for()
    with server.client(key) as c:
        assert len(c.get("/api/v1/executions").json()["items"]) == 1

    # A good one opens the new execution, which runs to the end on the server.
    page.fill("#replay-args", '{"word": "dog"}')
    page.click("#replay button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/executions/(?!" + exec_id + ")"))
    replay_id = page.url.rsplit("/", 1)[-1]
    page.locator("#summary[data-status='completed']").wait_for()
    page.screenshot(path=str(shots / "replay.png"), full_page=True)

    # The diff against the original names what changed.
    page.click("text=Compare with another execution")
    page.wait_for_url(re.compile(r"/ui/diff\?a="))
    page.locator("#diff table").wait_for()
    assert page.locator("#diff tr[data-diff='input:word']").get_attribute("data-status") == "changed"
    assert page.locator("#diff tr[data-diff='checkpoint:caption']").get_attribute("data-status") == "changed"
    assert replay_id in page.url and exec_id in page.url
    page.screenshot(path=str(shots / "diff.png"), full_page=True)


def test_deployments_promote_rollback_and_invoke_in_the_browser(
    browser: Any,
    server: ServerProcess,
    kitaru_cli: list[str],
    server_env: dict[str, str],
    sqlite_state: str,
    tmp_path: Path,
    shots: Path,
) -> None:
    """Two versions deployed with the Python API on the server's stores; an admin sees them,
    promotes the canary and rolls it back in the page, and the history shows each move; a read
    key sees the buttons disabled; the invoke form starts an execution of the tag's version."""
    from tests.server.test_deployments_api import Project

    project = Project(tmp_path / "project")
    try:
        assert project.deploy("v1", message="first") == 1
        assert project.deploy("v2", tag="canary", weight=10) == 2
    finally:
        project.close()
    admin = create_key(kitaru_cli, server_env, sqlite_state, "releaser", "admin")
    page = new_page(browser, viewport={"width": 1280, "height": 900})
    log_in(page, server, admin)

    # The list: the flow, its versions and its tags with their weights.
    page.click("nav a[href='/ui/deployments']")
    row = page.locator("#deployments tr[data-flow='review']")
    row.wait_for()
    assert row.locator("td[data-label='Versions']").inner_text() == "2"
    assert row.locator(".tag[data-tag='canary']").inner_text() == "canary (10%)"
    assert row.locator(".tag[data-tag='default']").inner_text() == "default"
    page.screenshot(path=str(shots / "deployments.png"), full_page=True)

    # The flow's page: versions with their tags, and the history so far.
    row.locator("a").click()
    page.locator("#versions tr[data-version='2'] .tag[data-tag='canary']").wait_for()
    assert page.locator("#versions tr[data-version='1'] .tag[data-tag='default']").count() == 1
    assert page.locator("#history tr[data-action='deploy']").count() == 2

    # Promote the canary: default moves to version 2, and the history records it.
    page.select_option("#promote-tag", "canary")
    page.click("#promote")
    page.locator("#history tr[data-action='promote'][data-version='2']").wait_for()
    page.locator("#versions tr[data-version='2'] .tag[data-tag='default']").wait_for()
    assert "version 2 (was 1)" in page.locator("#manage .notice").inner_text()
    page.screenshot(path=str(shots / "promoted.png"), full_page=True)

    # Roll back: default goes back to version 1.
    page.click("#rollback")
    page.locator("#history tr[data-action='rollback'][data-version='1']").wait_for()
    page.locator("#versions tr[data-version='1'] .tag[data-tag='default']").wait_for()
    actions = page.locator("#history tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.tag, r.dataset.version, r.dataset.action])"
    )
    assert actions == [  # newest first
        ["default", "1", "rollback"],
        ["default", "2", "promote"],
        ["canary", "2", "deploy"],
        ["default", "1", "deploy"],
    ]
    page.screenshot(path=str(shots / "rolled-back.png"), full_page=True)
    with server.client(admin) as c:
        tags = {t["tag"]: t["version"] for t in c.get("/api/v1/deployments").json()["tags"]}
        assert tags == {"default": 1, "canary": 2}

    # Invoke the canary with JSON arguments: its page opens and the version's code runs.
    page.select_option("#invoke-tag", "canary")
    page.fill("#invoke-args", "[1]")
    page.click("#invoke-form button[type=submit]")
    assert "JSON object" in page.locator("#invoke-form .error").inner_text()
    page.fill("#invoke-args", '{"topic": "browsers"}')
    page.click("#invoke-form button[type=submit]")
    page.wait_for_url(re.compile(r"/ui/executions/"))
    page.locator("#summary[data-status='completed']").wait_for()
    exec_id = page.url.rsplit("/", 1)[-1]
    with server.client(admin) as c:
        execution = c.get(f"/api/v1/executions/{exec_id}").json()
        assert execution["metadata"]["deployment"]["version"] == 2

    # A read key sees the same page with the buttons disabled; a move it forces is refused.
    reader = create_key(kitaru_cli, server_env, sqlite_state, "watcher", "read")
    viewer = new_page(browser)
    log_in(viewer, server, reader)
    viewer.goto(f"{server.url}/ui/deployments/review")
    viewer.locator("#history tr[data-action='rollback']").wait_for()
    assert viewer.locator("#promote").is_disabled()
    assert viewer.locator("#rollback").is_disabled()
    assert viewer.locator("#invoke-form button[type=submit]").is_disabled()
    status = viewer.evaluate(
        """async () => (await fetch('/api/v1/deployments/review/rollback', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: '{}'})).status"""
    )
    assert status == 403
    # The admin's session without its CSRF token is refused too, and nothing moved.
    status = page.evaluate(
        """async () => (await fetch('/api/v1/deployments/review/promote', {method: 'POST',
        headers: {'Content-Type': 'application/json'}, body: '{"tag": "canary"}'})).status"""
    )
    assert status == 403
    with server.client(admin) as c:
        moves = c.get("/api/v1/deployments/review/history").json()["items"]
        assert len(moves) == 4


def test_markup_from_a_flow_is_shown_as_text_never_run(
    browser: Any, server: ServerProcess, kitaru_cli: list[str], server_env: dict[str, str], sqlite_state: str
) -> None:
    """An execution id, a checkpoint's output and log line and a wait's question holding markup
    are shown as the text they are: nothing of it becomes an element, nothing of it runs."""
    from tests.server.server_flows import HOSTILE, HOSTILE_ID

    exec_id = run_flow(server_env, "hostile")
    assert exec_id == HOSTILE_ID
    key = create_key(kitaru_cli, server_env, sqlite_state, "viewer", "read")
    page = new_page(browser)
    log_in(page, server, key)
    page.get_by_text(HOSTILE_ID, exact=True).first.wait_for()  # the list shows the id as text
    page.get_by_text(HOSTILE_ID, exact=True).first.click()
    form = page.locator("form.answer[data-wait='approve']")
    form.wait_for()
    assert form.locator(".question").inner_text() == HOSTILE
    page.locator("#logs").get_by_text(HOSTILE).wait_for()
    artifact = page.locator("#artifacts details[data-artifact='render_markup']")
    artifact.locator("summary").click()
    assert HOSTILE in artifact.locator(".preview-text").inner_text()
    injected = page.evaluate(
        """() => ({xss: window.__xss ?? null,
                   elements: document.querySelectorAll('img[src="x"], svg[onload], [onerror]').length,
                   scripts: [...document.scripts].map((s) => s.src)})"""
    )
    assert injected == {"xss": None, "elements": 0, "scripts": [f"{server.url}/ui/static/app.js"]}


def test_the_api_docs_page_works_from_the_server_alone(
    browser: Any, server: ServerProcess, shots: Path
) -> None:
    """/docs draws every endpoint with nothing fetched from another origin (team servers run on
    networks without internet) and nothing refused by its policy (no inline script)."""
    page = new_page(browser)
    elsewhere: list[str] = []
    refused: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else elsewhere.append(r.url))
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server.url + "/docs")
    page.locator(
        ".opblock-summary-path[data-path='/api/v1/executions/{exec_id}/waits/{name}']"
    ).first.wait_for()
    assert page.locator(".opblock").count() >= 20  # every operation of the API, drawn
    page.screenshot(path=str(shots / "docs.png"), full_page=False)
    assert elsewhere == [] and refused == []
