"""
Log monitors: bounded history, levels, time formats, and the log routes.
"""

from __future__ import annotations

import os
import time

import pytest

from llamaswap.observe.events import EventBus, LogData
from llamaswap.observe.logs import History, LogMonitor, Logs, ProxyLog, format_timestamp
from tests.helpers import error_message, fake


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
    logs = Logs(bus, to_stdout="both")
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


def open_stream(server, path):
    response = server.run(server.get(path))
    return response, server.collect(response)


CONFIG = f"""
logToStdout: both
models:
  m:
    cmd: {fake("m")}
"""


@pytest.mark.parametrize(
    "choice, echoed",
    [("proxy", {"proxy"}), ("upstream", {"upstream"}), ("both", {"proxy", "upstream"}), ("none", set())],
)
def test_log_to_stdout_chooses_what_reaches_stdout_and_the_combined_log(choice, echoed):
    from twisted.logger import globalLogPublisher

    bus = EventBus()
    seen = []
    bus.subscribe(seen.append, LogData)
    printed = []

    def observer(event):
        if event.get("log_namespace") in ("proxy", "upstream"):
            printed.append(event["log_namespace"])

    globalLogPublisher.addObserver(observer)
    try:
        logs = Logs(bus, to_stdout=choice)
        logs.upstream.write(b"server line\n")
        logs.proxy.info("proxy line")
    finally:
        globalLogPublisher.removeObserver(observer)
    assert set(printed) == echoed
    combined = logs.combined.history()
    assert (b"server line" in combined, b"proxy line" in combined) == ("upstream" in echoed, "proxy" in echoed)
    # every source keeps its own history and live events whatever the choice
    assert logs.upstream.history() == b"server line\n" and len(seen) == 2


def test_log_to_stdout_changes_with_a_reload():
    logs = Logs(None)
    logs.upstream.write(b"hidden\n")
    logs.send_to_stdout("both")
    logs.upstream.write(b"shown\n")
    assert logs.combined.history() == b"shown\n"


def test_logs_history_and_browser_redirect(memory):
    server = memory(CONFIG)
    server.chat("m")
    response, text = server.fetch("GET", "/logs")
    assert response.headers.getRawHeaders("content-type") == ["text/plain"]
    assert b"fake upstream m: listening" in text  # upstream output
    assert b"[INFO] <m> ready after" in text  # proxy messages
    response, _ = server.fetch("GET", "/logs", headers={"Accept": "text/html,*/*"}, allow_redirects=False)
    assert response.code == 302
    assert response.headers.getRawHeaders("location") == ["/ui/"]


def test_log_streams(memory):
    server = memory(CONFIG)
    server.service.logs.proxy.info("before anyone listened")
    both, both_data = open_stream(server, "/logs/stream")
    proxy, proxy_data = open_stream(server, "/logs/stream/proxy")
    upstream, upstream_data = open_stream(server, "/logs/stream/upstream")
    live, live_data = open_stream(server, "/logs/stream/proxy?no-history")
    for response in (both, proxy, upstream, live):
        assert response.code == 200
        assert response.headers.getRawHeaders("x-accel-buffering") == ["no"]
        assert response.headers.getRawHeaders("content-type") == ["text/plain"]
    server.advance(0.01)
    assert b"before anyone listened" in both_data.data
    assert b"before anyone listened" in proxy_data.data
    assert b"before anyone listened" not in upstream_data.data
    assert live_data.data == b""
    server.chat("m")
    assert b"fake upstream m: listening" in upstream_data.data
    assert b"fake upstream m: listening" in both_data.data
    assert b"fake upstream m: listening" not in proxy_data.data
    assert b"<m> ready after" in live_data.data
    subscribers = server.service.bus.subscriber_count
    for collector in (both_data, proxy_data, upstream_data, live_data):
        collector.transport.stopProducing()
    server.advance(0.01)
    assert server.service.bus.subscriber_count == subscribers - 4


def test_unknown_log_stream_is_400(memory):
    server = memory(CONFIG)
    response, body = server.fetch("GET", "/logs/stream/bogus")
    assert (response.code, error_message(body)) == (400, "invalid logger. Use 'proxy', 'upstream' or a model's ID")


def test_log_stream_ends_on_shutdown(memory):
    server = memory(CONFIG)
    server.chat("m")
    _, collector = open_stream(server, "/logs/stream")
    server.stop()
    server.advance(0.01)
    assert collector.reason is not None
    assert b"stopping 1 model(s) before exiting" in collector.data


def test_time_zone_fixture_restores(utc):
    assert os.environ["TZ"] == "UTC"


MODELS = f"""
models:
  first:
    cmd: {fake("first")}
  "org/second":
    cmd: {fake("second")}
    aliases: [two]
groups:
  both: {{swap: false, members: [first, "org/second"]}}
"""


def test_a_model_servers_own_log_stream(memory):
    server = memory(MODELS)
    server.chat("first")
    first, first_data = open_stream(server, "/logs/stream/first")
    second, second_data = open_stream(server, "/logs/stream/org/second")  # ids with slashes
    alias, alias_data = open_stream(server, "/logs/stream/two?no-history")
    assert first.code == second.code == alias.code == 200
    server.advance(0.01)
    assert b"fake upstream first: listening" in first_data.data  # its history
    assert second_data.data == b""  # not started yet
    server.chat("org/second")
    server.advance(0.01)
    assert b"fake upstream second: listening" in second_data.data
    assert b"fake upstream second: listening" in alias_data.data
    assert b"second" not in first_data.data


def test_an_unknown_log_stream_is_400(memory):
    server = memory(MODELS)
    response, body = server.fetch("GET", "/logs/stream/nobody")
    assert response.code == 400
    assert error_message(body) == "invalid logger. Use 'proxy', 'upstream' or a model's ID"
