"""
Reloading the configuration: when its files change (C{--watch-config}) and
when the process gets SIGHUP.

Directories are watched rather than files (inotify on Linux, polling
elsewhere), so that editors which write a new file and rename it over the
old one, and Kubernetes ConfigMaps which swap a C{..data} symlink next to
the file, are seen as well as plain writes.  Bursts of events -- an editor
saving is often several -- are collapsed into one reload after a quiet
second.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

log = Logger()

DEBOUNCE_SECONDS = 1.0
POLL_SECONDS = 0.5
KUBERNETES_DATA_LINK = "..data"
YAML_SUFFIXES = (".yml", ".yaml")


def _signature(path: str) -> tuple | None:
    """
    What changes when the file's content is replaced (following symlinks).
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns)


class ConfigWatcher(Service):
    """
    Calls C{on_change} once things settle after the configuration file
    C{path} changes, or any C{*.yml}/C{*.yaml} file of C{directory} is
    written, added or removed.
    """

    name = "config-watcher"

    def __init__(
        self,
        path: str | None,
        on_change: Callable[[], None],
        reactor,
        debounce: float = DEBOUNCE_SECONDS,
        use_inotify: bool = True,
        directory: str | None = None,
    ):
        self.path = os.path.abspath(path) if path else None
        self.directory = os.path.abspath(directory) if directory else None
        self.on_change = on_change
        self._reactor = reactor
        self._debounce = debounce
        self._use_inotify = use_inotify
        self._pending = None
        self._notifier = None
        self._poller: LoopingCall | None = None
        self._last = self._snapshot()
        self.mode = ""

    def _snapshot(self) -> tuple:
        files = [self.path] if self.path else []
        if self.directory:
            try:
                names = sorted(os.listdir(self.directory))
            except OSError:
                names = []
            files.extend(os.path.join(self.directory, name) for name in names if name.endswith(YAML_SUFFIXES))
        return tuple((file, _signature(file)) for file in files)

    def _concerns(self, folder: str, name: str) -> bool:
        if self.path and folder == os.path.dirname(self.path):
            if name in (os.path.basename(self.path), KUBERNETES_DATA_LINK):
                return True
        if self.directory and folder == self.directory:
            return name.endswith(YAML_SUFFIXES) or name == KUBERNETES_DATA_LINK
        return False

    def startService(self) -> None:
        super().startService()
        if self._use_inotify and self._start_inotify():
            self.mode = "inotify"
        else:
            self.mode = "polling"
            self._poller = LoopingCall(self._poll)
            self._poller.clock = self._reactor
            self._poller.start(POLL_SECONDS, now=False)

    def _start_inotify(self) -> bool:
        try:
            from twisted.internet import inotify
        except ImportError:
            return False
        folders = {os.path.dirname(self.path)} if self.path else set()
        if self.directory:
            folders.add(self.directory)
        try:
            notifier = inotify.INotify(reactor=self._reactor)
            notifier.startReading()
            mask = (
                inotify.IN_CLOSE_WRITE
                | inotify.IN_MODIFY
                | inotify.IN_MOVED_TO
                | inotify.IN_MOVED_FROM
                | inotify.IN_CREATE
                | inotify.IN_DELETE
                | inotify.IN_ATTRIB
            )
            for folder in sorted(folders):
                notifier.watch(FilePath(folder), mask, callbacks=[self._inotify_event])
        except Exception as error:  # no inotify support, too many watches...
            log.warn("inotify unavailable ({error}); polling the configuration instead", error=error)
            return False
        self._notifier = notifier
        return True

    def _inotify_event(self, watch, path: FilePath, mask: int) -> None:
        folder = os.fsdecode(path.dirname())
        if self._concerns(folder, os.fsdecode(path.basename())):
            self._schedule()

    def _poll(self) -> None:
        current = self._snapshot()
        if current != self._last:
            self._last = current
            self._schedule()

    def _schedule(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.reset(self._debounce)
        else:
            self._pending = self._reactor.callLater(self._debounce, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = self._snapshot()
        self.on_change()

    def stopService(self) -> None:
        super().stopService()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None


class ReloadOnHangup(Service):
    """
    SIGHUP reloads the configuration, as C{kill -HUP} users expect of a
    daemon.  The handler only schedules the reload: the work happens in the
    reactor thread, between two events, like any other.
    """

    name = "reload-on-hangup"

    def __init__(self, on_hangup: Callable[[], None], reactor):
        self.on_hangup = on_hangup
        self._reactor = reactor
        self._previous = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._received)

    def _received(self, number, frame) -> None:
        self._reactor.callFromThread(self.on_hangup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
