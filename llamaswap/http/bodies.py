"""
Request bodies on their way to a model server: one already in memory is
written in one go; one Twisted spooled (to memory or a temporary file) is
streamed from the spool with flow control, never read whole into memory.
"""

from __future__ import annotations

import io
import mmap
from contextlib import contextmanager

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body already in memory, written in one go.

    (Twisted's FileBodyProducer hands data over through a cooperator
    whose timer rounds up to a whole millisecond per step: too slow for a
    proxy that should add nothing.)
    """

    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBodyProducer)
class FileProducer:
    """
    A request body in a (spooled) file, written as fast as the upstream
    connection takes it and paused when it does not.
    """

    CHUNK = 256 * 1024

    def __init__(self, file, length: int):
        self.file = file
        self.length = length
        self._consumer = None
        self._paused = False
        self._writing = False
        self._finished: Deferred | None = None

    def startProducing(self, consumer) -> Deferred:
        self._consumer = consumer
        self._finished = Deferred()
        self._write()
        return self._finished

    def _write(self) -> None:
        if self._writing:
            return  # a write below resumed us; the loop goes on
        self._writing = True
        try:
            while not self._paused and self._finished is not None and not self._finished.called:
                chunk = self.file.read(self.CHUNK)
                if not chunk:
                    self._finished.callback(None)
                    return
                self._consumer.write(chunk)
        finally:
            self._writing = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._write()

    def stopProducing(self) -> None:
        if self._finished is not None and not self._finished.called:
            self._finished.errback(CancelledError("the upstream request was aborted"))
            self._finished.addErrback(lambda _: None)


def spooled_body(content) -> FileProducer | None:
    """
    A producer for a request body Twisted spooled (memory or a temporary
    file), or C{None} when there is no body.
    """
    if content is None:
        return None
    content.seek(0, 2)
    length = content.tell()
    content.seek(0)
    return FileProducer(content, length) if length else None


@contextmanager
def spooled_view(content):
    """
    A spooled request body to search and slice like C{bytes} without
    reading it into memory: a read-only map of Twisted's temporary file,
    or the bytes of a small body Twisted kept in memory.
    """
    if content is None:
        yield b""
        return
    if isinstance(content, io.BytesIO):
        yield content.getvalue()
        return
    content.seek(0, 2)
    if not content.tell():
        yield b""
        return
    view = mmap.mmap(content.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield view
    finally:
        view.close()
