"""
Log monitors: what C{/logs}, C{/logs/stream} and the UI show.

There are two sources -- C{proxy} (llamaswap's own messages) and
C{upstream} (everything the model servers print) -- plus their combination.
Each keeps a bounded history of its most recent output, publishes every new
piece on the event bus as L{LogData}, and copies its lines to Twisted's log
(stdout with C{twistd -n}, the log file when daemonised).
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime
from typing import Callable

from twisted.logger import Logger, LogLevel

from llamaswap.events import EventBus, LogData

HISTORY_BYTES = 10 * 1024
LEVELS = {"debug": 0, "info": 1, "warn": 2, "error": 3}
_TWISTED_LEVELS = {
    "debug": LogLevel.info,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


class History:
    """
    The last C{limit} bytes written, kept as the pieces they were written in
    (a piece larger than the limit is cut to its tail).
    """

    def __init__(self, limit: int = HISTORY_BYTES):
        self.limit = limit
        self._pieces: deque[bytes] = deque()
        self._size = 0

    def append(self, data: bytes) -> None:
        if len(data) > self.limit:
            data = data[-self.limit :]
        self._pieces.append(data)
        self._size += len(data)
        while self._size > self.limit:
            self._size -= len(self._pieces.popleft())

    def get(self) -> bytes:
        return b"".join(self._pieces)


class LogMonitor:
    """
    One log source: bounded history, live publication, a copy to Twisted's
    log, and optionally a parent (the combined log) that sees it all too.
    """

    def __init__(
        self,
        source: str,
        bus: EventBus | None = None,
        parent: LogMonitor | None = None,
        history_bytes: int = HISTORY_BYTES,
        echo: bool = True,
    ):
        self.source = source
        self.bus = bus
        self.parent = parent
        self._history = History(history_bytes)
        self._log = Logger(namespace=source) if echo else None

    def write(self, data: bytes, level: str = "info") -> None:
        if not data:
            return
        self._history.append(data)
        if self._log is not None:
            twisted_level = _TWISTED_LEVELS[level]
            for line in data.decode("utf-8", "replace").splitlines():
                self._log.emit(twisted_level, "{line}", line=line)
        if self.bus is not None:
            self.bus.publish(LogData(self.source, data))
        if self.parent is not None:
            self.parent._history.append(data)

    def history(self) -> bytes:
        return self._history.get()


class ProxyLog:
    """
    llamaswap's own leveled messages: C{[LEVEL] message}, optionally
    prefixed with a timestamp in one of the named formats.
    """

    def __init__(
        self,
        monitor: LogMonitor,
        level: str = "info",
        time_format: str = "",
        clock: Callable[[], float] = time.time,
    ):
        self.monitor = monitor
        self.configure(level, time_format)
        self._clock = clock

    def configure(self, level: str, time_format: str) -> None:
        self.level = LEVELS.get(level, LEVELS["info"])
        self.time_format = time_format

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.level

    def log(self, level: str, message: str) -> None:
        if LEVELS[level] < self.level:
            return
        stamp = ""
        if self.time_format:
            stamp = format_timestamp(self.time_format, self._clock()) + " "
        self.monitor.write(f"{stamp}[{level.upper()}] {message}\n".encode(), level)

    def debug(self, message: str) -> None:
        self.log("debug", message)

    def info(self, message: str) -> None:
        self.log("info", message)

    def warn(self, message: str) -> None:
        self.log("warn", message)

    def error(self, message: str) -> None:
        self.log("error", message)


class Logs:
    """
    The three monitors of one running service.
    """

    def __init__(self, bus: EventBus | None, level: str = "info", time_format: str = ""):
        self.combined = LogMonitor("all", None, echo=False)
        self.proxy_monitor = LogMonitor("proxy", bus, parent=self.combined)
        self.upstream = LogMonitor("upstream", bus, parent=self.combined)
        self.proxy = ProxyLog(self.proxy_monitor, level, time_format)

    def monitor(self, name: str) -> LogMonitor | None:
        """
        The monitor behind a C{/logs/stream/<name>} path ("" is combined).
        """
        return {"": self.combined, "proxy": self.proxy_monitor, "upstream": self.upstream}.get(name)


# ---------------------------------------------------------------- timestamps


def _zone(moment: datetime, colon: bool, zulu: bool) -> str:
    offset = moment.utcoffset()
    seconds = int(offset.total_seconds()) if offset else 0
    if zulu and seconds == 0:
        return "Z"
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{sign}{hours:02d}{':' if colon else ''}{minutes:02d}"


def _fraction(moment: datetime, digits: int, trim: bool) -> str:
    text = f"{moment.microsecond:06d}000"[:digits]
    if trim:
        text = text.rstrip("0")
        return "." + text if text else ""
    return "." + text


def format_timestamp(name: str, when: float) -> str:
    """
    Render C{when} in one of the named formats of the Go original (its
    reference time is Mon Jan 2 15:04:05 MST 2006), in local time.
    """
    moment = datetime.fromtimestamp(when).astimezone()
    day_padded = f"{moment.day:2d}"
    zone_name = moment.tzname() or _zone(moment, False, False)
    clock = moment.strftime("%H:%M:%S")
    if name == "ansic":
        return moment.strftime(f"%a %b {day_padded} {clock} %Y")
    if name == "unixdate":
        return moment.strftime(f"%a %b {day_padded} {clock} ") + f"{zone_name} {moment.year}"
    if name == "rubydate":
        return moment.strftime(f"%a %b %d {clock} ") + f"{_zone(moment, False, False)} {moment.year}"
    if name == "rfc822":
        return moment.strftime("%d %b %y %H:%M ") + zone_name
    if name == "rfc822z":
        return moment.strftime("%d %b %y %H:%M ") + _zone(moment, False, False)
    if name == "rfc850":
        return moment.strftime(f"%A, %d-%b-%y {clock} ") + zone_name
    if name == "rfc1123":
        return moment.strftime(f"%a, %d %b %Y {clock} ") + zone_name
    if name == "rfc1123z":
        return moment.strftime(f"%a, %d %b %Y {clock} ") + _zone(moment, False, False)
    if name == "rfc3339":
        return moment.strftime(f"%Y-%m-%dT{clock}") + _zone(moment, True, True)
    if name == "rfc3339nano":
        return moment.strftime(f"%Y-%m-%dT{clock}") + _fraction(moment, 9, True) + _zone(moment, True, True)
    if name == "kitchen":
        return f"{moment.hour % 12 or 12}:{moment.minute:02d}{'PM' if moment.hour >= 12 else 'AM'}"
    stamp = moment.strftime(f"%b {day_padded} {clock}")
    if name == "stamp":
        return stamp
    if name == "stampmilli":
        return stamp + _fraction(moment, 3, False)
    if name == "stampmicro":
        return stamp + _fraction(moment, 6, False)
    if name == "stampnano":
        return stamp + _fraction(moment, 9, False)
    raise ValueError(f"unknown time format {name!r}")
