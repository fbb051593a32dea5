"""
twistd's text log, written for a fraction of the CPU.

Every proxied request ends in an access-log line, and the text observer
twistd installs spends more on it than llamaswap spends routing the request:
it works out the local time zone and formats a timestamp for every event,
and renders each event's format string.  This observer writes exactly the
same text (C{2026-11-29T20:56:59+0000 [proxy#info] message}) to exactly the
same place twistd would have chosen -- stdout in the foreground, the
C{--logfile} (C{twistd.log} by default, rotated on SIGUSR1) as a daemon --
with the timestamp made once a second, and llamaswap's own lines (events
whose format is just C{{line}}) put together without a format pass.

twistd keeps its own choice when told to log elsewhere (C{--syslog},
C{--logger}).
"""

from __future__ import annotations

import signal
import sys
from typing import IO

from twisted.application.service import IService, MultiService
from twisted.logger import FileLogObserver, ILogObserver, eventAsText, formatTime
from twisted.python.logfile import LogFile

LINE_FORMAT = "{line}"


class _Timestamps:
    """
    twistd's timestamp for a moment, formatted once per second.
    """

    def __init__(self):
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


def text_formatter():
    """
    A function formatting an event as twistd's classic text log line
    (L{twisted.logger.formatEventAsClassicLogText}).
    """
    stamp = _Timestamps()

    def format_event(event: dict) -> str | None:
        line = event.get("line")
        if (
            type(line) is str
            and line
            and event.get("log_format") == LINE_FORMAT
            and "log_system" not in event
            and "log_failure" not in event
        ):
            level = event.get("log_level")
            level_name = "-" if level is None else level.name
            text = f"{stamp(event.get('log_time'))} [{event.get('log_namespace', '-')}#{level_name}] {line}"
        else:
            text = eventAsText(event, formatTime=stamp)
            if not text:
                return None
        return text.replace("\n", "\n\t") + "\n"

    return format_event


def text_observer(out: IO[str]) -> FileLogObserver:
    return FileLogObserver(out, text_formatter())


def twistd_observer(twistd_options) -> ILogObserver | None:
    """
    The observer for twistd's options (C{--logfile}, C{--nodaemon}), or
    C{None} where twistd must choose (syslog, a C{--logger} of the user's,
    or options that are not twistd's).
    """
    try:
        if twistd_options.get("syslog") or twistd_options.get("logger"):
            return None
        filename = twistd_options.get("logfile")
        nodaemon = twistd_options.get("nodaemon")
    except AttributeError:
        return None
    if filename == "-" or (nodaemon and not filename):
        if not nodaemon:
            return None  # twistd refuses this itself, with its own message
        return text_observer(sys.stdout)
    log_file = LogFile.fromFullPath(filename or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        # as twistd does: SIGUSR1 starts a new file, unless somebody else
        # already handles the signal

        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return text_observer(log_file)


class _Logged(MultiService):
    """
    The service twistd runs, with the log observer it is to use: twistd
    looks for one on its application, which is this service's parent.
    """

    def __init__(self, observer: ILogObserver, service: IService):
        super().__init__()
        self.observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self.observer)


def for_twistd(service: IService, twistd_options) -> IService:
    """
    C{service}, arranged so that twistd logs through L{text_observer} when
    its options let it.
    """
    observer = twistd_observer(twistd_options)
    return service if observer is None else _Logged(observer, service)
