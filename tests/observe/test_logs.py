"""
Log monitors: bounded history, levels, time formats, and the log routes.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent

from llamaswap.observe.events import EventBus, LogData
from llamaswap.observe.logs import History, LogMonitor, Logs, ProxyLog, format_timestamp
from tests.helpers import Body, fake, sleep


def test_history_keeps_the_last_bytes():
    history = History(limit=10)
    for piece in (b"aaaa", b"bbbb", b"cccc"):
        history.append(piece)
    assert history.get() == b"bbbbcccc"  # whole pieces, at most 10 bytes
    history.append(b"0123456789ABCDEF")
    assert history.get() == b"6789ABCDEF"


def test_monitor_history_is_bounded_to_about_10kb():
    monitor = LogMonitor("upstream", echo=False)
    for index in range(5000):
        monitor.write(f"line {index}\n".encode())
    history = monitor.history()
    assert 9 * 1024 < len(history) <= 10 * 1024
    assert history.endswith(b"line 4999\n")


def test_monitor_publishes_and_feeds_the_combined_log():
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append, LogData)
    logs = Logs(bus)
    logs.upstream.write(b"from the server\n")
    logs.proxy.info("from llamaswap")
    assert seen == [LogData("upstream", b"from the server\n"), LogData("proxy", b"[INFO] from llamaswap\n")]
    assert logs.combined.history() == b"from the server\n[INFO] from llamaswap\n"
    assert logs.monitor("") is logs.combined
    assert logs.monitor("proxy") is logs.proxy_monitor
    assert logs.monitor("nope") is None


@pytest.mark.parametrize(
    "level, shown",
    [
        ("debug", ["DEBUG", "INFO", "WARN", "ERROR"]),
        ("info", ["INFO", "WARN", "ERROR"]),
        ("warn", ["WARN", "ERROR"]),
        ("error", ["ERROR"]),
    ],
)
def test_levels(level, shown):
    monitor = LogMonitor("proxy", echo=False)
    log = ProxyLog(monitor, level)
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    lines = monitor.history().decode().splitlines()
    assert [line.split("]")[0][1:] for line in lines] == shown


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# 2006-01-02 15:04:05.123456789 UTC is Go's reference time (nanoseconds cut to microseconds here).
REFERENCE = 1136214245.123456


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ansic", "Mon Jan  2 15:04:05 2006"),
        ("unixdate", "Mon Jan  2 15:04:05 UTC 2006"),
        ("rubydate", "Mon Jan 02 15:04:05 +0000 2006"),
        ("rfc822", "02 Jan 06 15:04 UTC"),
        ("rfc822z", "02 Jan 06 15:04 +0000"),
        ("rfc850", "Monday, 02-Jan-06 15:04:05 UTC"),
        ("rfc1123", "Mon, 02 Jan 2006 15:04:05 UTC"),
        ("rfc1123z", "Mon, 02 Jan 2006 15:04:05 +0000"),
        ("rfc3339", "2006-01-02T15:04:05Z"),
        ("rfc3339nano", "2006-01-02T15:04:05.123456Z"),
        ("kitchen", "3:04PM"),
        ("stamp", "Jan  2 15:04:05"),
        ("stampmilli", "Jan  2 15:04:05.123"),
        ("stampmicro", "Jan  2 15:04:05.123456"),
        ("stampnano", "Jan  2 15:04:05.123456000"),
    ],
)
def test_time_formats(utc, name, expected):
    assert format_timestamp(name, REFERENCE) == expected


def test_time_format_prefixes_proxy_lines(utc):
    monitor = LogMonitor("proxy", echo=False)
    ProxyLog(monitor, "info", "rfc3339", clock=lambda: REFERENCE).info("hello")
    assert monitor.history() == b"2006-01-02T15:04:05Z [INFO] hello\n"


def test_unknown_time_format():
    with pytest.raises(ValueError):
        format_timestamp("iso", 0)


# ---------------------------------------------------------------- routes


@inlineCallbacks
def open_stream(server, path):
    response = yield Agent(reactor).request(b"GET", (server.url + path).encode())
    collector = Body()
    response.deliverBody(collector)
    return response, collector


CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
"""


@pytest_twisted.inlineCallbacks
def test_logs_history_and_browser_redirect(llamaswap):
    server = llamaswap(CONFIG)
    yield server.chat("m")
    response = yield server.get("/logs")
    assert response.headers.getRawHeaders("content-type") == ["text/plain"]
    text = yield response.text()
    assert "fake upstream m: listening" in text  # upstream output
    assert "[INFO] <m> ready after" in text  # proxy messages
    response = yield server.get("/logs", headers={"Accept": "text/html,*/*"}, allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["/ui/"]


@pytest_twisted.inlineCallbacks
def test_log_streams(llamaswap):
    server = llamaswap(CONFIG)
    server.service.logs.proxy.info("before anyone listened")
    both, both_data = yield open_stream(server, "/logs/stream")
    proxy, proxy_data = yield open_stream(server, "/logs/stream/proxy")
    upstream, upstream_data = yield open_stream(server, "/logs/stream/upstream")
    live, live_data = yield open_stream(server, "/logs/stream/proxy?no-history")
    for response in (both, proxy, upstream, live):
        assert response.code == 200
        assert response.headers.getRawHeaders("x-accel-buffering") == ["no"]
        assert response.headers.getRawHeaders("content-type") == ["text/plain"]
    yield sleep(0.05)
    assert b"before anyone listened" in both_data.data
    assert b"before anyone listened" in proxy_data.data
    assert b"before anyone listened" not in upstream_data.data
    assert live_data.data == b""
    yield server.chat("m")
    yield sleep(0.1)
    assert b"fake upstream m: listening" in upstream_data.data
    assert b"fake upstream m: listening" in both_data.data
    assert b"fake upstream m: listening" not in proxy_data.data
    assert b"<m> ready after" in live_data.data
    subscribers = server.service.bus.subscriber_count
    for collector in (both_data, proxy_data, upstream_data, live_data):
        collector.transport.stopProducing()
    yield sleep(0.1)
    assert server.service.bus.subscriber_count == subscribers - 4


@pytest_twisted.inlineCallbacks
def test_unknown_log_stream_is_400(llamaswap):
    server = llamaswap(CONFIG)
    response = yield server.get("/logs/stream/bogus")
    assert response.code == 400
    assert (yield response.text()) == "invalid logger. Use 'proxy' or 'upstream'"


@pytest_twisted.inlineCallbacks
def test_log_stream_ends_on_shutdown(llamaswap):
    server = llamaswap(CONFIG)
    _, collector = yield open_stream(server, "/logs/stream")
    yield server.service.stopService()
    yield collector.done
    assert b"llamaswap listening" in collector.data


def test_time_zone_fixture_restores(utc):
    assert os.environ["TZ"] == "UTC"
