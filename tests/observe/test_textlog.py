"""
The text log observer: the very text twistd's own observer writes, in the
place twistd would have chosen.
"""

from __future__ import annotations

import io
import sys

import pytest
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from llamaswap.observe import textlog

WHEN = 1_764_450_000.25


def events():
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    base = {"log_time": WHEN, "log_namespace": "proxy", "log_level": LogLevel.info}
    yield {**base, "log_format": "{line}", "line": '[INFO] Request 127.0.0.1 "POST /v1/x HTTP/1.1" 200'}
    yield {**base, "log_format": "{line}", "line": "first\nsecond"}
    yield {**base, "log_format": "{line}", "line": "{not a field}"}
    yield {**base, "log_format": "{line}", "line": ""}
    yield {**base, "log_format": "{line}"}
    yield {**base, "log_format": "{line}", "line": 42}
    yield {**base, "log_format": "{line}", "line": "from a system", "log_system": "model#3"}
    yield {**base, "log_format": "{line}", "line": "with a failure", "log_failure": failure}
    yield {**base, "log_format": "{count} model(s) {what}", "count": 2, "what": "stopped"}
    yield {**base, "log_format": "{broken"}
    yield {"log_format": "no level, no namespace", "log_time": WHEN}
    yield {"log_format": "no time", "log_level": LogLevel.warn, "log_namespace": "x"}
    yield {**base, "log_level": LogLevel.error, "log_text": "legacy", "log_format": None}
    yield {**base, "log_time": WHEN + 0.5, "log_format": "{line}", "line": "same second"}
    yield {**base, "log_time": WHEN + 1, "log_format": "{line}", "line": "next second"}


@pytest.mark.parametrize("event", list(events()), ids=lambda event: repr(event.get("line", event.get("log_format"))))
def test_the_same_text_as_twisted(event):
    assert textlog.text_formatter()(dict(event)) == formatEventAsClassicLogText(dict(event))


def test_one_formatter_through_many_seconds():
    format_event = textlog.text_formatter()
    for offset in (0, 0.1, 0.9, 1.0, 3600.5, 86400 * 200):
        event = {"log_time": WHEN + offset, "log_format": "{line}", "line": "x", "log_level": LogLevel.info}
        assert format_event(dict(event)) == formatEventAsClassicLogText(dict(event))


def test_the_observer_writes_a_line_per_event():
    out = io.StringIO()
    observer = textlog.text_observer(out)
    observer({"log_time": WHEN, "log_format": "{line}", "line": "one", "log_namespace": "proxy"})
    observer({"log_time": WHEN, "log_format": "{line}", "line": "two", "log_namespace": "proxy"})
    assert out.getvalue().splitlines()[1].endswith("[proxy#-] two")


@pytest.mark.parametrize(
    "options",
    [
        {"syslog": True, "nodaemon": True, "logfile": None, "logger": None},
        {"syslog": False, "nodaemon": True, "logfile": None, "logger": "somewhere.observer"},
        {"nodaemon": False, "logfile": "-"},  # twistd refuses this itself
        None,
    ],
)
def test_twistd_keeps_its_choice(options):
    assert textlog.twistd_observer(options) is None


@pytest.mark.parametrize("options", [{"nodaemon": True, "logfile": None}, {"nodaemon": True, "logfile": "-"}])
def test_foreground_logs_to_stdout(options, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    observer = textlog.twistd_observer(options)
    observer({"log_time": WHEN, "log_format": "{line}", "line": "hello", "log_namespace": "proxy"})
    assert out.getvalue().endswith(" [proxy#-] hello\n")


@pytest.mark.parametrize("options", [{"nodaemon": False, "logfile": None}, {"nodaemon": True, "logfile": "my.log"}])
def test_a_log_file(options, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(textlog.signal, "signal", lambda *args: None)  # not this test process's handler
    observer = textlog.twistd_observer(options)
    observer({"log_time": WHEN, "log_format": "{line}", "line": "hello", "log_namespace": "proxy"})
    log_file = observer._outFile
    assert isinstance(log_file, LogFile)
    log_file.close()
    name = options["logfile"] or "twistd.log"
    assert (tmp_path / name).read_text().endswith(" [proxy#-] hello\n")
