"""
The web UI in headless Chromium against a real running llamaswap: loading
and unloading models, log filters, live activity and statistics, the theme,
surviving a server restart, and screenshots of every page.

Needs Debian's chromium (/usr/bin/chromium) and Playwright for Python;
skipped with a reason when either is missing.  Screenshots are written to
test-artifacts/ui/.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from tests.browser import launch, missing
from tests.helpers import fake, free_port, free_port_range
from tests.test_twistd import TWISTD, wait_for_health

pytestmark = pytest.mark.browser

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"

if missing():
    pytest.skip(missing(), allow_module_level=True)
from playwright import sync_api  # noqa: E402


class Server:
    """
    A twistd llamaswap on a fixed port that can be stopped and started again.
    """

    def __init__(self, tmp_path: pathlib.Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / "config.yaml"
        self.config.write_text(
            textwrap.dedent(
                f"""
                startPort: {free_port_range(4)}
                models:
                  alpha:
                    name: "Alpha 7B"
                    description: "first test model"
                    cmd: {fake("alpha", "--startup-delay", "0.3")}
                    aliases: [gpt-test]
                    capabilities: {{in: [text, image], out: [text], tools: true, context: 8192}}
                  beta:
                    name: "Beta 13B"
                    description: "second test model"
                    cmd: {fake("beta", "--colour")}
                  hidden:
                    cmd: {fake("hidden")}
                    unlisted: true
                  broken:
                    cmd: {fake("broken", "--startup-delay", "5", "--crash-after", "0.1")}
                    maxStartFailures: 1
                    failureCooldown: 600
                  studio:
                    name: "Studio"
                    cmd: {fake("studio", "--startup-delay", "1")}
                    capabilities: {{in: [text], out: [image, audio], reranker: true}}
                peers:
                  far:
                    proxy: http://127.0.0.1:{free_port()}
                    models: [remote]
                """
            )
        )
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "llamaswap", "-c", str(self.config), "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_health(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)

    def chat(self, model: str) -> dict:
        request = urllib.request.Request(
            self.url + "/v1/chat/completions",
            data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    yield page
    context.close()


def expect(locator):
    return sync_api.expect(locator)


def model_row(page, model_id):
    return page.locator(f'tr[data-model="{model_id}"]')


def test_load_and_unload_a_model(server, page):
    page.goto(server.url + "/ui/models")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    row = model_row(page, "alpha")
    expect(row.get_by_test_id("state")).to_have_text("stopped")
    row.get_by_role("button", name="Load").click()
    expect(row.get_by_test_id("state")).to_have_text("ready", timeout=15000)
    row.get_by_role("button", name="Unload").click()
    expect(row.get_by_test_id("state")).to_have_text("stopped", timeout=15000)
    # the model's upstream page is one click away
    assert row.get_by_role("link", name="Open alpha's own page").get_attribute("href") == "/upstream/alpha/"
    assert page.errors == []


def test_a_models_own_page(server, page):
    page.goto(server.url + "/ui/models")
    model_row(page, "alpha").get_by_role("link", name="alpha", exact=True).click()
    assert page.url.endswith("/ui/models/alpha")
    settings = page.get_by_test_id("settings")
    expect(settings).to_contain_text("first test model")
    expect(settings).to_contain_text("--respond alpha")
    state = page.get_by_test_id("state")
    expect(state).to_have_text("stopped")
    page.get_by_role("button", name="Load").click()
    expect(state).to_have_text("ready", timeout=15000)
    expect(page.get_by_test_id("model-log")).to_contain_text("fake upstream alpha", timeout=10000)
    server.chat("alpha")
    expect(page.get_by_test_id("model-activity").locator("tbody tr")).to_have_count(1, timeout=10000)
    page.get_by_role("button", name="Unload").click()
    expect(state).to_have_text("stopped", timeout=15000)
    page.go_back()
    expect(model_row(page, "alpha")).to_be_visible()
    assert page.errors == []


def test_queued_requests_are_shown(server, page):
    import threading

    server.chat("alpha")
    page.goto(server.url + "/ui/models")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")

    outcomes: dict[str, object] = {}

    streaming_started = threading.Event()

    def post(path: str, model: str) -> None:
        body = json.dumps({"model": model, "stream": True}).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(server.url + path, data=body), timeout=60) as answer:
                first = answer.readline()
                streaming_started.set()
                outcomes[model] = (answer.status, (first + answer.read())[-200:])
        except Exception as error:  # reported by the assertion below
            outcomes[model] = error
            streaming_started.set()

    streaming = threading.Thread(target=post, args=("/v1/chat/completions?chunks=60&delay=0.05", "alpha"))
    streaming.start()
    assert streaming_started.wait(10)  # alpha is busy before beta asks
    waiting = threading.Thread(target=post, args=("/v1/chat/completions", "beta"))
    waiting.start()
    row = model_row(page, "beta")
    expect(row.get_by_test_id("queued")).to_have_text("1 queued", timeout=10000)
    streaming.join(30)
    waiting.join(30)
    assert outcomes["beta"][0] == 200, outcomes
    expect(row.get_by_test_id("queued")).to_have_count(0, timeout=10000)
    expect(row.get_by_test_id("state")).to_have_text("ready", timeout=10000)
    assert page.errors == []


def test_a_failed_model_shows_why_and_can_be_reset(server, page):
    page.goto(server.url + "/ui/models")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    with pytest.raises(urllib.error.HTTPError):
        server.chat("broken")
    row = model_row(page, "broken")
    expect(row.get_by_test_id("state")).to_have_text("failed", timeout=10000)
    expect(row.get_by_test_id("reason")).to_contain_text("crashing on purpose")
    row.get_by_role("button", name="Reset").click()
    expect(row.get_by_test_id("state")).to_have_text("stopped", timeout=10000)
    expect(row.get_by_test_id("reason")).to_have_count(0)
    assert page.errors == []


def test_unlisted_names_and_unload_all(server, page):
    page.goto(server.url + "/ui/models")
    expect(model_row(page, "hidden")).to_be_visible()
    page.get_by_role("button", name="Show unlisted").click()
    expect(model_row(page, "hidden")).to_have_count(0)
    page.get_by_role("button", name="Show names").click()
    expect(model_row(page, "alpha").locator(".model-name a[data-page]")).to_have_text("Alpha 7B")
    server.chat("beta")
    expect(model_row(page, "beta").get_by_test_id("state")).to_have_text("ready")
    page.get_by_role("button", name="Unload all").click()
    expect(model_row(page, "beta").get_by_test_id("state")).to_have_text("stopped", timeout=15000)
    # preferences survive a reload
    page.reload()
    expect(model_row(page, "hidden")).to_have_count(0)
    expect(model_row(page, "alpha").locator(".model-name a[data-page]")).to_have_text("Alpha 7B")


def test_log_filter(server, page):
    server.chat("alpha")
    page.goto(server.url + "/ui/logs")
    proxy_log = page.get_by_test_id("log-proxy")
    expect(proxy_log).to_contain_text("<alpha> ready after")
    expect(proxy_log).to_contain_text("Request 127.0.0.1")
    page.get_by_label("Filter Proxy logs").fill("ready after")
    expect(proxy_log).to_contain_text("<alpha> ready after")
    expect(proxy_log).not_to_contain_text("Request 127.0.0.1")
    page.get_by_label("Filter Proxy logs").fill("([unclosed")
    expect(page.get_by_label("Filter Proxy logs")).to_have_class("filter invalid")
    page.get_by_label("Filter Proxy logs").fill("")
    expect(proxy_log).to_contain_text("Request 127.0.0.1")
    # live lines arrive without reloading
    upstream_log = page.get_by_test_id("log-upstream")
    server.chat("beta")
    expect(upstream_log).to_contain_text("fake upstream beta: listening")
    page.get_by_role("button", name="Wrap").first.click()
    expect(proxy_log).to_have_class("log-body wrap")


def test_logs_in_colour_one_model_alone_and_paused(server, page):
    server.chat("beta")
    page.goto(server.url + "/ui/logs")
    upstream_log = page.get_by_test_id("log-upstream")
    expect(upstream_log.locator("span.ansi-fg-2.ansi-bold")).to_have_text("listening")
    expect(upstream_log.locator("span.ansi-fg-6").first).to_contain_text("127.0.0.1:")
    assert "\x1b" not in upstream_log.inner_text()
    server.chat("alpha")
    expect(upstream_log).to_contain_text("fake upstream alpha")
    # one model alone, from its own stream
    page.get_by_test_id("log-model-upstream").select_option("beta")
    expect(upstream_log).to_contain_text("fake upstream beta")
    expect(upstream_log).not_to_contain_text("fake upstream alpha")
    page.get_by_test_id("log-model-upstream").select_option("")
    expect(upstream_log).to_contain_text("fake upstream alpha")
    # paused: new output waits until resumed
    proxy_log = page.get_by_test_id("log-proxy")
    page.locator('[data-log="proxy"]').get_by_role("button", name="Pause").click()
    before = proxy_log.inner_text()
    server.chat("beta")
    page.wait_for_timeout(500)
    assert proxy_log.inner_text() == before
    page.locator('[data-log="proxy"]').get_by_role("button", name="Resume").click()
    expect(proxy_log).not_to_have_text(before)
    assert page.errors == []


def test_activity_and_statistics_update_live(server, page):
    page.goto(server.url + "/ui/activity")
    expect(page.get_by_text("No requests yet")).to_be_visible()
    server.chat("beta")
    table = page.get_by_test_id("activity")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table.locator("tbody tr").first).to_contain_text("beta")
    server.chat("alpha")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").first).to_contain_text("alpha")  # newest first
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_test_id("stat-requests")).to_have_text("2")
    expect(page.get_by_test_id("stat-generated")).to_have_text("20")
    expect(page.get_by_test_id("stat-p50")).to_have_text("250.0")
    assert page.url.endswith("/ui/models")


def test_activity_filters_captures_export_and_cancel(server, page, tmp_path):
    import threading

    page.goto(server.url + "/ui/activity")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    body = json.dumps({"model": "beta", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(server.url + "/v1/chat/completions?chunks=3", data=body), timeout=30) as answer:
        answer.read()
    server.chat("alpha")
    table = page.get_by_test_id("activity")
    expect(table.locator("tbody tr")).to_have_count(2)
    # filter by model
    page.get_by_test_id("filter-model").select_option("beta")
    expect(table.locator("tbody tr")).to_have_count(1)
    # the capture of the streamed answer: headers, and the message it assembles to
    table.get_by_role("button", name="Show the capture of request 1").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("assembled")).to_have_text("beta-0 beta-1 beta-2 ")
    expect(dialog.get_by_test_id("capture-body").first).to_contain_text('"stream": true')
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_have_count(0)
    # export what is shown
    with page.expect_download() as downloading:
        page.get_by_role("button", name="CSV").click()
    saved = tmp_path / "activity.csv"
    downloading.value.save_as(saved)
    rows = saved.read_text().splitlines()
    assert rows[0].startswith("id,time,model") and len(rows) == 2 and ",beta," in rows[1]
    # a stream in flight, cancelled from the page
    page.get_by_test_id("filter-model").select_option("")
    outcome = {}

    def stream():
        request = urllib.request.Request(
            server.url + "/v1/chat/completions?chunks=200&delay=0.05",
            data=json.dumps({"model": "alpha", "stream": True}).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            outcome["body"] = answer.read()

    thread = threading.Thread(target=stream)
    thread.start()
    inflight = page.get_by_test_id("inflight")
    expect(inflight.locator("tbody tr")).to_have_count(1, timeout=10000)
    inflight.get_by_role("button", name=re.compile("Cancel request")).click()
    thread.join(15)
    assert b"request cancelled" in outcome["body"]
    expect(page.get_by_test_id("inflight-count")).to_have_text("0")
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("tbody tr").first.locator(".status")).to_have_attribute("data-ok", "false")
    assert page.errors == []


def test_theme_toggle_is_remembered(server, page):
    page.goto(server.url + "/ui/models")
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "light")
    page.get_by_role("button", name="Toggle light and dark theme").click()
    expect(html).to_have_attribute("data-theme", "dark")
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")


def test_title_is_editable_and_remembered(server, page):
    page.goto(server.url + "/ui/models")
    title = page.locator("#app-title")
    title.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("GPU box")
    page.keyboard.press("Enter")
    expect(page).to_have_title("GPU box")
    page.reload()
    expect(title).to_have_text("GPU box")


def test_survives_a_server_restart(server, page):
    server.chat("alpha")
    page.goto(server.url + "/ui/activity")
    dot = page.locator("#connection")
    expect(dot).to_have_attribute("data-state", "connected")
    expect(page.get_by_test_id("activity").locator("tbody tr")).to_have_count(1)
    server.stop()
    expect(dot).to_have_attribute("data-state", "disconnected", timeout=10000)
    server.start()
    expect(dot).to_have_attribute("data-state", "connected", timeout=20000)
    # resynced with the new server: its metrics (none yet) replace the old ones
    expect(page.get_by_text("No requests yet")).to_be_visible()
    server.chat("beta")
    expect(page.get_by_test_id("activity").locator("tbody tr")).to_have_count(1)
    expect(page.get_by_test_id("activity").locator("tbody tr").first).to_contain_text("beta")
    page.get_by_role("link", name="Models").click()
    expect(model_row(page, "alpha").get_by_test_id("state")).to_have_text("stopped")
    expect(model_row(page, "beta").get_by_test_id("state")).to_have_text("ready")


def test_settings_theme_profile_and_build(server, page):
    server.config.write_text(
        server.config.read_text() + "profiles:\n  quiet:\n    description: only beta\n    pins: {alpha: beta}\n"
    )
    server.stop()
    server.start()
    page.goto(server.url + "/ui/settings")
    expect(page.get_by_test_id("build")).to_contain_text("Version")
    page.get_by_role("radio", name="Dark").check()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.get_by_role("radio", name="Light").check()
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    page.reload()
    expect(page.get_by_role("radio", name="Light")).to_be_checked()
    # the profile switch changes routing: alpha is answered by beta
    page.get_by_test_id("profile-select").select_option("quiet")
    expect(page.get_by_test_id("profile-status")).to_have_text("switched")
    expect(page.get_by_test_id("profile-select")).to_have_value("quiet")
    assert server.chat("alpha")["responseMessage"] == "beta"
    page.get_by_test_id("profile-select").select_option("")
    expect(page.get_by_test_id("profile-select")).to_have_value("")
    assert server.chat("alpha")["responseMessage"] == "alpha"
    assert page.errors == []


def test_playground_chat_streams_and_stops(server, page):
    page.goto(server.url + "/ui/playground")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    page.get_by_test_id("playground-model").select_option("beta")
    page.get_by_label("Message").fill("Hello there")
    page.get_by_role("button", name="Send").click()
    answer = page.locator('.bubble[data-role="assistant"]').last
    expect(answer).to_contain_text("beta-0 beta-1", timeout=15000)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    # a long answer (the fake is told to stream slowly), stopped half way
    page.route(
        "**/v1/chat/completions",
        lambda route: route.continue_(url=route.request.url + "?chunks=400&delay=0.05"),
    )
    page.get_by_label("Message").fill("Tell me more")
    page.get_by_role("button", name="Send").click()
    answer = page.locator('.bubble[data-role="assistant"]').last
    expect(answer).to_contain_text("beta-3", timeout=10000)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_test_id("playground-status")).to_have_text("stopped")
    assert "beta-399" not in answer.inner_text()
    # the conversation stays in the browser, until cleared
    page.reload()
    expect(page.locator(".bubble")).to_have_count(4)
    page.get_by_role("button", name="Clear").click()
    expect(page.locator(".bubble")).to_have_count(0)
    assert page.errors == []


def test_markdown_is_built_safely(server, page):
    page.goto(server.url + "/ui/playground")
    html = page.evaluate(
        r"""async () => {
            const { renderMarkdown } = await import('/ui/js/markdown.js');
            const node = renderMarkdown('# Title\n**bold** and `code` <img src=x onerror=alert(1)>\n\n- one\n- two\n\n```py\nprint(1)\n```');
            return node.innerHTML;
        }"""
    )
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html and "<li>two</li>" in html
    assert '<code data-language="py">print(1)</code>' in html
    assert "<img" not in html and "&lt;img" in html  # model output is text, never markup


def visible_tabs(page) -> list[str]:
    return page.get_by_role("tab").all_inner_texts()


def test_playground_tabs_follow_the_models_capabilities(server, page):
    page.goto(server.url + "/ui/playground")
    picker = page.get_by_test_id("playground-model")
    expect(picker.locator("option")).to_have_count(5)  # alpha, beta, broken, studio, far/remote
    picker.select_option("alpha")  # text out, vision, tools: chat only
    expect(page.get_by_role("tab")).to_have_count(2)
    assert visible_tabs(page) == ["Chat", "Concurrency"]
    picker.select_option("studio")  # images and audio out, a reranker
    expect(page.get_by_role("tab")).to_have_count(3)
    assert visible_tabs(page) == ["Images", "Speech", "Rerank"]
    expect(page.get_by_role("tab", name="Images")).to_have_attribute("aria-selected", "true")
    page.get_by_role("tab", name="Images").press("ArrowRight")
    expect(page.get_by_role("tab", name="Speech")).to_be_focused()
    expect(page.get_by_role("tabpanel")).to_have_count(1)
    picker.select_option("beta")  # declares nothing: every tab
    expect(page.get_by_role("tab")).to_have_count(6)
    assert page.errors == []


def open_playground_tab(server, page, model: str, tab: str) -> None:
    page.goto(server.url + "/ui/playground")
    page.get_by_test_id("playground-model").select_option(model)
    page.get_by_role("tab", name=tab).click()


def test_playground_images_speech_transcription_and_rerank(server, page):
    open_playground_tab(server, page, "studio", "Images")
    page.get_by_label("Image prompt").fill("a llama swapping hats")
    page.get_by_role("button", name="Generate").click()
    # the model takes a second to start: the wait is explained
    expect(page.get_by_test_id("images-status")).to_contain_text("loading studio", timeout=5000)
    image = page.get_by_test_id("images").locator("img")
    expect(image).to_have_count(1, timeout=15000)
    expect(image).to_have_attribute("alt", "studio image 0")
    assert image.evaluate("img => img.complete && img.naturalWidth") == 1  # the fake's 1x1 PNG, decoded
    expect(page.get_by_test_id("images-status")).to_have_text("1 image from studio")

    page.get_by_role("tab", name="Speech").click()
    page.get_by_label("Text to speak").fill("Hello from the playground")
    page.get_by_role("button", name="Speak").click()
    audio = page.get_by_test_id("speech").locator("audio")
    expect(audio).to_have_count(1, timeout=10000)
    duration = audio.evaluate(
        "audio => audio.readyState >= 1 ? audio.duration"
        " : new Promise(done => audio.addEventListener('loadedmetadata', () => done(audio.duration)))"
    )
    assert abs(duration - 0.1) < 0.01  # the fake's 800 samples at 8 kHz, playable
    expect(page.get_by_test_id("speech").get_by_role("link")).to_have_attribute("download", "speech.wav")

    page.get_by_test_id("playground-model").select_option("beta")  # declares nothing: may transcribe
    page.get_by_role("tab", name="Transcription").click()
    page.get_by_role("button", name="Transcribe").click()
    expect(page.get_by_test_id("transcription-status")).to_have_text("choose an audio file first")
    page.get_by_label("Audio file").set_input_files({"name": "note.wav", "mimeType": "audio/wav", "buffer": b"RIFF" + b"\0" * 1996})
    page.get_by_role("button", name="Transcribe").click()
    expect(page.get_by_test_id("transcript")).to_have_text("The length of the file is 2000 bytes", timeout=10000)

    page.get_by_test_id("playground-model").select_option("studio")
    page.get_by_role("tab", name="Rerank").click()
    page.get_by_label("Query").fill("llamas")
    page.get_by_label("Documents").fill("llamas are camelids\nswapping is fast\n\nGPUs are warm")
    page.get_by_role("button", name="Rerank").click()
    rows = page.get_by_test_id("rerank").locator("tbody tr")
    expect(rows).to_have_count(3, timeout=10000)
    assert rows.first.locator("td").all_inner_texts() == ["1", "1.0000", "llamas are camelids"]
    assert rows.last.locator("td").all_inner_texts() == ["3", "0.3333", "GPUs are warm"]
    assert page.errors == []


def test_choosing_a_model_for_speech_does_not_load_it(server, page):
    open_playground_tab(server, page, "studio", "Speech")
    page.get_by_label("Voice").focus()  # a stopped model is not asked for its voices
    page.wait_for_timeout(500)
    assert json.loads(urllib.request.urlopen(server.url + "/running", timeout=10).read())["running"] == []
    voices = page.locator("#playground-voices option")
    expect(voices).to_have_count(0)
    server.chat("studio")  # once it runs (and the page has heard so), its voices are offered
    page.wait_for_function(
        "async () => (await import('/ui/js/store.js')).store.models.some(m => m.id === 'studio' && m.state === 'ready')"
    )
    page.get_by_label("Text to speak").focus()
    page.get_by_label("Voice").focus()
    expect(voices).to_have_count(3, timeout=10000)
    assert voices.evaluate_all("options => options.map(option => option.value)") == ["alloy", "echo", "studio-voice"]
    assert page.errors == []


def test_playground_errors_are_shown(server, page):
    open_playground_tab(server, page, "studio", "Rerank")
    page.route("**/v1/rerank", lambda route: route.continue_(post_data=b"{not json"))
    page.get_by_label("Query").fill("q")
    page.get_by_label("Documents").fill("d")
    page.get_by_role("button", name="Rerank").click()
    expect(page.get_by_test_id("rerank-status")).to_contain_text("error: ", timeout=10000)
    expect(page.get_by_role("button", name="Rerank")).to_be_enabled()
    assert page.get_by_test_id("rerank").locator("tr").count() == 0


def test_playground_concurrency_tester(server, page):
    open_playground_tab(server, page, "beta", "Concurrency")
    page.get_by_label("Parallel requests").fill("5")
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_test_id("concurrency-summary")).to_contain_text("5 of 5 done", timeout=20000)
    rows = page.get_by_test_id("concurrency").locator("tbody tr")
    expect(rows).to_have_count(5)
    for row in rows.all():
        number, state, first, latency, tokens, speed = row.locator("td").all_inner_texts()
        assert state == "done" and tokens == "10", row.inner_text()  # the fake's usage: 10 completion tokens
        assert first.endswith(("ms", " s")) and latency.endswith(("ms", " s"))
    # the five were in flight together: the activity log has them all
    with urllib.request.urlopen(server.url + "/api/metrics/activity?model=beta", timeout=10) as answer:
        assert json.loads(answer.read())["total"] == 5
    # a long run, stopped
    page.route("**/v1/chat/completions", lambda route: route.continue_(url=route.request.url + "?chunks=400&delay=0.05"))
    page.get_by_label("Parallel requests").fill("3")
    page.get_by_role("button", name="Run").click()
    expect(rows.first.locator("td").nth(1)).to_have_text("streaming", timeout=10000)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_test_id("concurrency-summary")).to_have_text("none of 3 finished", timeout=10000)
    assert set(page.get_by_test_id("concurrency").locator("tbody tr td:nth-child(2)").all_inner_texts()) == {"stopped"}
    assert page.errors == []


def test_hardware_page(server, page):
    page.goto(server.url + "/ui/settings")
    page.get_by_role("link", name="This machine's hardware").click()
    expect(page).to_have_url(server.url + "/ui/hardware")
    expect(page.get_by_role("link", name="Hardware")).to_have_attribute("aria-current", "page")
    hardware = page.get_by_test_id("hardware")
    expect(hardware.get_by_role("region", name="CPU")).to_contain_text(f"Logical threads{os.cpu_count()}")
    expect(hardware.get_by_role("region", name="Accelerators (0)")).to_contain_text("No accelerators were detected")
    text = page.get_by_test_id("hardware-text").input_value()
    assert text.startswith("Hardware summary") and f"Logical threads: {os.cpu_count()}" in text
    # a machine with a GPU (as nvidia-smi would report it)
    with urllib.request.urlopen(server.url + "/api/hardware", timeout=10) as answer:
        machine = json.loads(answer.read())
    machine["accelerators"] = [
        {
            "index": 0, "kind": "gpu", "model": "NVIDIA GeForce RTX 4090", "vendor": "NVIDIA", "architecture": None,
            "memory": {"capacity_bytes": 24 * 2**30, "kind": "dedicated"},
            "driver": {"name": "nvidia", "version": "550.54"}, "power_limit_watts": 450.0,
        }
    ]
    page.route("**/api/hardware", lambda route: route.fulfill(json=machine))
    page.reload()
    gpus = hardware.get_by_role("region", name="Accelerators (1)")
    expect(gpus).to_contain_text("NVIDIA GeForce RTX 4090")
    expect(gpus).to_contain_text("Memory24.0 GiB (Dedicated)")
    expect(gpus).to_contain_text("Drivernvidia 550.54")
    expect(gpus).to_contain_text("Power limit450 W")
    assert "Accelerators (1)\n  1: NVIDIA GeForce RTX 4090" in page.get_by_test_id("hardware-text").input_value()
    # no snapshot: said so
    page.unroute("**/api/hardware")
    page.route("**/api/hardware", lambda route: route.fulfill(status=503, json={"error": {"message": "hardware detection unavailable"}}))
    page.reload()
    expect(hardware).to_contain_text("Hardware detection is unavailable: hardware detection unavailable")
    assert page.errors == [] or all("503" in error for error in page.errors)


def test_capability_tags_and_peers_on_the_models_page(server, page):
    page.goto(server.url + "/ui/models")
    expect(model_row(page, "alpha")).to_be_visible()
    expect(page.get_by_test_id("capability-tags")).to_have_count(0)  # off by default
    expect(model_row(page, "far/remote").get_by_test_id("state")).to_have_text("peer")
    page.goto(server.url + "/ui/settings")
    page.get_by_label("Show capability tags").check()
    page.get_by_role("link", name="Models", exact=True).click()
    tags = model_row(page, "alpha").get_by_test_id("capability-tags").locator(".tag")
    expect(tags).to_have_text(["vision", "function calling", "8,192 context", "alias gpt-test"])
    expect(model_row(page, "studio").get_by_test_id("capability-tags")).to_contain_text("audio speech")
    expect(model_row(page, "beta").get_by_test_id("capability-tags")).to_have_count(0)
    assert page.errors == []


@pytest.fixture
def prefixed(server):
    """
    The server behind a reverse proxy that mounts it under /llama.
    """
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.prefix_proxy", str(port), str(server.port), "/llama"],
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/llama"
    try:
        for _ in range(100):
            assert proxy.poll() is None, "the prefix proxy exited"
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    assert answer.read() == b"OK"
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the prefix proxy never answered")
        yield url
    finally:
        proxy.terminate()
        proxy.wait(10)


def test_behind_a_path_prefix(server, prefixed, page):
    page.goto(prefixed + "/")  # redirected to /llama/ui/ (the proxy says where it mounts us)
    expect(page).to_have_url(prefixed + "/ui/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    row = model_row(page, "beta")
    row.get_by_role("button", name="Load").click()
    expect(row.get_by_test_id("state")).to_have_text("ready", timeout=15000)
    row.get_by_role("link", name="beta", exact=True).click()
    expect(page).to_have_url(prefixed + "/ui/models/beta")
    expect(page.get_by_test_id("state")).to_have_text("ready")
    page.reload()  # a deep link loads on its own
    expect(page.get_by_test_id("state")).to_have_text("ready")
    expect(page.get_by_test_id("model-log")).to_contain_text("fake upstream beta", timeout=10000)
    page.get_by_role("link", name="Playground").click()
    expect(page).to_have_url(prefixed + "/ui/playground")
    page.get_by_test_id("playground-model").select_option("beta")
    page.get_by_label("Message").fill("hi")
    page.get_by_role("button", name="Send").click()
    expect(page.locator('.bubble[data-role="assistant"]').last).to_contain_text("beta-9", timeout=15000)
    page.get_by_role("link", name="Activity").click()
    expect(page.get_by_test_id("activity").locator("tbody tr")).to_have_count(1, timeout=10000)
    assert page.errors == []


def test_performance_charts(server, page):
    for model in ("alpha", "beta"):
        server.chat(model)
    page.goto(server.url + "/ui/performance")
    expect(page.get_by_test_id("chart-cpu").locator("path.chart-line")).to_have_count(1, timeout=15000)
    expect(page.get_by_test_id("chart-memory").locator("path.chart-line")).to_have_count(1)
    expect(page.get_by_test_id("chart-rate").locator("path.chart-line")).to_have_count(1)
    expect(page.get_by_test_id("chart-speed").locator("path.chart-line")).to_have_count(1)
    expect(page.get_by_test_id("chart-first-token").locator("path.chart-line")).to_have_count(1)
    expect(page.get_by_role("img", name="CPU use over time")).to_be_visible()
    assert page.errors == []


def test_with_api_keys_the_browser_signs_in_once(server, browser):
    server.config.write_text("apiKeys: [sk-ui-key]\n" + server.config.read_text())
    server.stop()
    server.start()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.url + "/ui/models", timeout=10)
    assert refused.value.code == 401  # what makes a browser ask for the key
    assert refused.value.headers["WWW-Authenticate"] == 'Basic realm="llama-swap"'

    context = browser.new_context(http_credentials={"username": "me", "password": "sk-ui-key"})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(server.url + "/ui/models")
        expect(page.locator("#connection")).to_have_attribute("data-state", "connected")  # the event stream too
        row = model_row(page, "beta")
        row.get_by_role("button", name="Load").click()
        expect(row.get_by_test_id("state")).to_have_text("ready", timeout=15000)
        page.get_by_role("link", name="Activity").click()
        expect(page.get_by_test_id("inflight-count")).to_have_text("0")
        page.get_by_role("link", name="Settings").click()
        expect(page.get_by_test_id("build")).to_contain_text("Version")
    finally:
        context.close()
    assert errors == []


# every page, and each of the playground's tabs
PLAYGROUND_TABS = ["Images", "Speech", "Transcription", "Rerank", "Concurrency"]
SHOWN = ["playground", *[f"playground/{tab.lower()}" for tab in PLAYGROUND_TABS], "models", "logs", "activity", "performance", "hardware", "settings", "models/alpha"]


def show(page, server, name):
    page_name, _, tab = name.partition("/")
    if page_name == "playground" and tab:
        page.get_by_test_id("playground-model").select_option("beta")
        page.get_by_role("tab", name=tab.capitalize()).click()
        expect(page.get_by_role("tabpanel")).to_be_visible()
    else:
        page.goto(f"{server.url}/ui/{name}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("width, height", [(1440, 900), (390, 844)])
def test_screenshots(server, browser, theme, width, height):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for model in ("alpha", "beta", "alpha"):
        server.chat(model)
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=theme)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        for name in SHOWN:
            show(page, server, name)
            expect(page.locator("html")).to_have_attribute("data-theme", theme)
            page.wait_for_timeout(300)
            # nothing sticks out sideways
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} is {overflow}px wider than the {width}px viewport"
            page.screenshot(path=str(ARTIFACTS / f"{name.replace('/', '-')}-{theme}-{width}x{height}.png"))
    finally:
        context.close()
    assert errors == []


def test_every_page_passes_an_accessibility_scan_and_paints_fast(server, page, browser):
    axe = pytest.importorskip("axe_playwright_python.sync_playwright").Axe()
    server.chat("alpha")
    problems = []
    dark = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    try:
        for scanned in (page, dark.new_page()):
            for name in SHOWN:
                show(scanned, server, name)
                scanned.wait_for_timeout(300)
                results = axe.run(scanned)
                theme = scanned.evaluate("document.documentElement.dataset.theme")
                for violation in results.response["violations"]:
                    if violation["impact"] in ("serious", "critical"):
                        targets = [node["target"] for node in violation["nodes"]][:3]
                        problems.append((theme, name, violation["id"], targets))
    finally:
        dark.close()
    assert problems == [], "\n".join(map(str, problems))
    # first paint, from a cold load of the UI with nothing but llamaswap on the network
    page.goto(server.url + "/ui/models")
    paint = page.evaluate(
        "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"
    )
    assert paint is not None and paint < 300, paint


def test_keyboard_only(server, page):
    page.goto(server.url + "/ui/models")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")

    def tab_to(locator, limit=60):
        for _ in range(limit):
            page.keyboard.press("Tab")
            if locator.evaluate("element => element === document.activeElement"):
                return
        raise AssertionError(f"Tab never reached {locator}")

    # load a model from its row
    load = model_row(page, "beta").get_by_role("button", name="Load")
    tab_to(load)
    page.keyboard.press("Enter")
    expect(model_row(page, "beta").get_by_test_id("state")).to_have_text("ready", timeout=15000)
    # to the playground by its tab, and a message sent with Enter
    tab_to(page.get_by_role("link", name="Playground"))
    page.keyboard.press("Enter")
    expect(page.get_by_label("Message")).to_be_visible()
    page.get_by_test_id("playground-model").focus()
    page.keyboard.type("be")  # a select picks the option typed
    expect(page.get_by_test_id("playground-model")).to_have_value("beta")
    tab_to(page.get_by_label("Message"))
    page.keyboard.type("hello")
    page.keyboard.press("Enter")
    expect(page.locator('.bubble[data-role="assistant"] .bubble-body').last).to_contain_text("beta-0", timeout=15000)
    # a capture opens and closes with the keyboard
    tab_to(page.get_by_role("link", name="Activity"))
    page.keyboard.press("Enter")
    capture = page.get_by_role("button", name=re.compile("Show the capture of request"))
    expect(capture.first).to_be_visible()
    tab_to(capture.first)
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert page.errors == []
