"""
Log monitors: what C{/logs}, C{/logs/stream} and the UI show.

There are two sources -- C{proxy} (llamaswap's own messages) and
C{upstream} (everything the model servers print) -- plus their combination.
Each keeps a bounded history of its most recent output and publishes every
new piece on the event bus as L{LogData}.  C{logToStdout} chooses which
sources also go to the combined log and to Twisted's log (stdout with
C{twistd -n}, the log file when daemonised): C{proxy} (the default),
C{upstream}, C{both} or C{none}.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from twisted.logger import Logger, LogLevel

from llamaswap.observe.events import EventBus, LogData
from llamaswap.observe.timestamps import format_timestamp

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
        self._logger = Logger(namespace=source)
        self._log = self._logger if echo else None

    def echo(self, enabled: bool, parent: LogMonitor | None) -> None:
        """
        Whether lines also go to Twisted's log, and to which combined log.
        """
        self._log = self._logger if enabled else None
        self.parent = parent

    def write(self, data: bytes, level: str = "info", lines: list[str] | None = None, model: str = "") -> None:
        """
        Add C{data}; C{lines} is its text, split, when the caller has it;
        C{model} the model server it came from, if any.
        """
        if not data:
            return
        self._history.append(data)
        if self._log is not None:
            twisted_level = _TWISTED_LEVELS[level]
            for line in lines if lines is not None else data.decode("utf-8", "replace").splitlines():
                self._log.emit(twisted_level, "{line}", line=line)
        if self.bus is not None:
            self.bus.publish(LogData(self.source, data, model))
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
        line = f"{stamp}[{level.upper()}] {message}"
        if "\n" in message:
            self.monitor.write((line + "\n").encode(), level)
        else:
            self.monitor.write((line + "\n").encode(), level, [line])

    def debug(self, message: str) -> None:
        self.log("debug", message)

    def info(self, message: str) -> None:
        self.log("info", message)

    def warn(self, message: str) -> None:
        self.log("warn", message)

    def error(self, message: str) -> None:
        self.log("error", message)


class ModelLog:
    """
    One model server's output: its own bounded history (for
    C{/logs/stream/<model>}), and everything also goes to the upstream log.
    """

    def __init__(self, model_id: str, upstream: LogMonitor):
        self.model_id = model_id
        self.upstream = upstream
        self._history = History()

    def write(self, data: bytes) -> None:
        if data:
            self._history.append(data)
            self.upstream.write(data, model=self.model_id)

    def history(self) -> bytes:
        return self._history.get()


STDOUT_CHOICES = {"proxy": ("proxy",), "upstream": ("upstream",), "both": ("proxy", "upstream"), "none": ()}


class Logs:
    """
    The three monitors of one running service.
    """

    def __init__(self, bus: EventBus | None, level: str = "info", time_format: str = "", to_stdout: str = "proxy"):
        self.combined = LogMonitor("all", None, echo=False)
        self.proxy_monitor = LogMonitor("proxy", bus, parent=self.combined)
        self.upstream = LogMonitor("upstream", bus, parent=self.combined)
        self.proxy = ProxyLog(self.proxy_monitor, level, time_format)
        self.models: dict[str, ModelLog] = {}
        self.send_to_stdout(to_stdout)

    def for_model(self, model_id: str) -> ModelLog:
        log = self.models.get(model_id)
        if log is None:
            log = self.models[model_id] = ModelLog(model_id, self.upstream)
        return log

    def forget_models(self, keep) -> None:
        """
        Drop the histories of models no longer configured.
        """
        for model_id in [model_id for model_id in self.models if model_id not in keep]:
            del self.models[model_id]

    def send_to_stdout(self, choice: str) -> None:
        """
        C{logToStdout}: the sources that reach stdout and the combined log
        (each keeps its own history and live stream whatever the choice).
        """
        chosen = STDOUT_CHOICES.get(choice, STDOUT_CHOICES["proxy"])
        for name, monitor in (("proxy", self.proxy_monitor), ("upstream", self.upstream)):
            monitor.echo(name in chosen, self.combined if name in chosen else None)

    def in_combined(self, source: str) -> bool:
        monitor = self.monitor(source)
        return monitor is not None and monitor.parent is self.combined

    def monitor(self, name: str) -> LogMonitor | None:
        """
        The monitor behind a C{/logs/stream/<name>} path ("" is combined).
        """
        return {"": self.combined, "proxy": self.proxy_monitor, "upstream": self.upstream}.get(name)
