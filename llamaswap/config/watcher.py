"""
--watch-config: notice when the configuration file changes.

The file's I{directory} is watched (inotify on Linux, polling elsewhere), so
that editors which write a new file and rename it over the old one, and
Kubernetes ConfigMaps which swap a C{..data} symlink next to the file, are
seen as well as plain writes.  Bursts of events -- an editor saving is often
several -- are collapsed into one reload after a quiet second.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

log = Logger()

DEBOUNCE_SECONDS = 1.0
POLL_SECONDS = 0.5
KUBERNETES_DATA_LINK = "..data"


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
    name = "config-watcher"

    def __init__(
        self,
        path: str,
        on_change: Callable[[], None],
        reactor,
        debounce: float = DEBOUNCE_SECONDS,
        use_inotify: bool = True,
    ):
        self.path = os.path.abspath(path)
        self.on_change = on_change
        self._reactor = reactor
        self._debounce = debounce
        self._use_inotify = use_inotify
        self._pending = None
        self._notifier = None
        self._poller: LoopingCall | None = None
        self._last = _signature(self.path)
        self.mode = ""

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
        try:
            notifier = inotify.INotify(reactor=self._reactor)
            notifier.startReading()
            mask = (
                inotify.IN_CLOSE_WRITE
                | inotify.IN_MODIFY
                | inotify.IN_MOVED_TO
                | inotify.IN_CREATE
                | inotify.IN_DELETE
                | inotify.IN_ATTRIB
            )
            notifier.watch(FilePath(os.path.dirname(self.path)), mask, callbacks=[self._inotify_event])
        except Exception as error:  # no inotify support, too many watches...
            log.warn("inotify unavailable ({error}); polling the config file instead", error=error)
            return False
        self._notifier = notifier
        return True

    def _inotify_event(self, watch, path: FilePath, mask: int) -> None:
        name = os.fsdecode(path.basename())
        if name in (os.path.basename(self.path), KUBERNETES_DATA_LINK):
            self._schedule()

    def _poll(self) -> None:
        current = _signature(self.path)
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
        self._last = _signature(self.path)
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
