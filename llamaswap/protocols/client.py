"""
A lean HTTP/1.1 client connection for relaying requests to model servers.

Twisted's Agent is general and careful, and a third of the proxy's time per
request went into it.  A reverse proxy needs much less: send one request,
read one response head, pass the body through as it arrives (dechunked),
honour flow control, and reuse the connection when the response allows it.
That is all this does; anything unusual -- a malformed response, a
connection closed early -- ends the exchange with a clear error.
"""

from __future__ import annotations

from typing import Callable
from typing import Protocol as TypingProtocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

MAX_HEAD_BYTES = 64 * 1024
NO_BODY_STATUSES = {204, 304}


class UpstreamError(Exception):
    """
    The upstream connection failed or sent something we cannot read.
    """


class NoResponse(UpstreamError):
    """
    The connection ended before any response arrived (safe to retry a
    request that was fully in memory on a fresh connection).
    """


@frozen
class ResponseHead:
    code: int
    phrase: bytes
    headers: Headers


class BodySink(TypingProtocol):
    def body_data(self, data: bytes) -> None: ...

    def body_done(self, complete: bool, reason: str) -> None: ...


class UpstreamConnection(Protocol):
    """
    One keep-alive connection; one exchange at a time.
    """

    def __init__(self, on_idle: Callable[[UpstreamConnection], None] | None = None):
        self.on_idle = on_idle
        self.busy = False
        self.reusable = False
        self.used = 0
        self._buffer = b""
        self._state = "idle"
        self._head: Deferred | None = None
        self._sink: BodySink | None = None
        self._remaining = 0
        self._chunked = False
        self._chunked_state = "size"
        self._keep_alive = True
        self._method = b""
        self._received_anything = False
        self.connected_deferred: Deferred = Deferred()
        self.lost = False

    # ------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        self.connected_deferred.callback(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = True
        self.reusable = False
        state, self._state = self._state, "closed"
        if state == "head":
            error = NoResponse if not self._received_anything else UpstreamError
            self._fail_head(error(f"connection closed before the response: {reason.getErrorMessage()}"))
        elif state == "body":
            if self._remaining == -1 and not self._chunked:
                self._end_body(True, "")  # the body ran until the close, as announced
            else:
                self._end_body(False, f"connection lost mid-response: {reason.getErrorMessage()}")

    # ------------------------------------------------------------ sending

    def send(
        self,
        method: bytes,
        target: bytes,
        host: bytes,
        headers: Headers,
        body: bytes | None = None,
        producer=None,
    ) -> Deferred:
        """
        Send a request.  C{body} (bytes) or C{producer} (an IBodyProducer
        with a known length) is the request body.

        @return: a Deferred firing with the L{ResponseHead}; call L{read_body}
            after it to receive the body.
        """
        if self.busy or self.lost:
            raise UpstreamError("connection not available")
        self.busy = True
        self.used += 1
        self._state = "head"
        self._method = method
        self._received_anything = False
        self._keep_alive = True
        self._head = Deferred()
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.append(name + b": " + value)
        length = len(body) if body is not None else (producer.length if producer is not None else None)
        if length is not None and (length or method not in (b"GET", b"HEAD")):
            lines.append(b"Content-Length: " + str(length).encode())
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if producer is None:
            self.transport.write(head + body if body else head)
        else:
            self.transport.write(head)
            self.transport.registerProducer(producer, True)
            sending = producer.startProducing(self.transport)
            sending.addBoth(self._body_sent)
        return self._head

    def _body_sent(self, result):
        if not self.lost:
            self.transport.unregisterProducer()
        if isinstance(result, Failure):
            self._keep_alive = False
            self.abort()
        return None

    def read_body(self, sink: BodySink) -> None:
        """
        Deliver the body of the response whose head was received to C{sink}.
        """
        self._sink = sink
        if self._state == "body":
            self._parse(b"")
        elif self._state == "closed":
            sink.body_done(False, "connection lost")

    def pause(self) -> None:
        if not self.lost:
            self.transport.pauseProducing()

    def resume(self) -> None:
        if not self.lost:
            self.transport.resumeProducing()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self.reusable = False
            self.transport.abortConnection()

    # ------------------------------------------------------------ receiving

    def dataReceived(self, data: bytes) -> None:
        if self._state == "idle":
            # Nothing was asked: an idle connection talking is broken.
            self.abort()
            return
        self._received_anything = True
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        if data:
            self._buffer = self._buffer + data if self._buffer else data
        while self._buffer or self._state == "body":
            if self._state == "head":
                if not self._parse_head():
                    return
            elif self._state == "body":
                if self._sink is None:
                    return  # waiting for read_body
                if not self._parse_body():
                    return
            else:
                return

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._fail_head(UpstreamError("response head too large"))
                self.abort()
            return False
        block, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        lines = block.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        try:
            version = status[0]
            code = int(status[1])
            if not version.startswith(b"HTTP/1."):
                raise ValueError(version)
        except (IndexError, ValueError):
            self._fail_head(UpstreamError(f"malformed status line from upstream: {lines[0][:80]!r}"))
            self.abort()
            return False
        if 100 <= code < 200 and code != 101:
            return True  # an interim answer (100 Continue): the real one follows
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                self._fail_head(UpstreamError(f"malformed header line from upstream: {line[:80]!r}"))
                self.abort()
                return False
            headers.addRawHeader(name, value.strip())
        connection = b",".join(headers.getRawHeaders(b"connection", [])).lower()
        if version == b"HTTP/1.0":
            self._keep_alive = b"keep-alive" in connection
        elif b"close" in connection:
            self._keep_alive = False
        transfer = b",".join(headers.getRawHeaders(b"transfer-encoding", [])).lower()
        self._chunked = b"chunked" in transfer
        lengths = headers.getRawHeaders(b"content-length")
        if self._method == b"HEAD" or code in NO_BODY_STATUSES:
            self._remaining = 0
            self._chunked = False
        elif self._chunked:
            self._remaining = 0
            self._chunked_state = "size"
        elif lengths:
            try:
                values = {int(value) for value in b",".join(lengths).split(b",")}
                if len(values) != 1 or min(values) < 0:
                    raise ValueError(lengths)
            except ValueError:
                self._fail_head(UpstreamError(f"invalid Content-Length from upstream: {lengths!r}"))
                self.abort()
                return False
            self._remaining = values.pop()
        else:
            self._remaining = -1  # until the connection closes
            self._keep_alive = False
        self._state = "body"
        head, self._head = self._head, None
        head.callback(ResponseHead(code, status[2] if len(status) > 2 else b"", headers))
        return True

    def _relay(self, sink: BodySink) -> None:
        """
        Pass on as much of the buffer as the current body (or chunk) still has.
        """
        data = self._buffer[: self._remaining]
        self._buffer = self._buffer[len(data) :]
        self._remaining -= len(data)
        if data:
            sink.body_data(data)

    def _parse_body(self) -> bool:
        sink = self._sink
        if not self._chunked:
            if self._remaining == -1:
                data, self._buffer = self._buffer, b""
                if data:
                    sink.body_data(data)
                return False
            if self._remaining:
                self._relay(sink)
            if self._remaining == 0:
                self._end_body(True, "")
            return False
        # chunked
        if self._chunked_state == "size":
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > 1024:
                    self._end_body(False, "malformed chunk size from upstream")
                    self.abort()
                return False
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError(line)
            except ValueError:
                self._end_body(False, f"malformed chunk size from upstream: {line[:40]!r}")
                self.abort()
                return False
            if size == 0:
                self._chunked_state = "trailer"
            else:
                self._remaining = size
                self._chunked_state = "data"
            return True
        if self._chunked_state == "data":
            self._relay(sink)
            if self._remaining == 0:
                self._chunked_state = "data-end"
                return True
            return False
        if self._chunked_state == "data-end":
            if len(self._buffer) < 2:
                return False
            if self._buffer[:2] != b"\r\n":
                self._end_body(False, "malformed chunk ending from upstream")
                self.abort()
                return False
            self._buffer = self._buffer[2:]
            self._chunked_state = "size"
            return True
        # trailer: header lines until an empty one
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        if line == b"":
            self._end_body(True, "")
            return False
        return True

    # ------------------------------------------------------------ outcomes

    def _fail_head(self, error: Exception) -> None:
        self.reusable = False
        head, self._head = self._head, None
        if head is not None and not head.called:
            head.errback(error)

    def _end_body(self, complete: bool, reason: str) -> None:
        sink, self._sink = self._sink, None
        # Bytes beyond the response mean we lost track: do not reuse.
        self.reusable = complete and self._keep_alive and not self.lost and not self._buffer
        self._buffer = b""
        self._state = "idle" if self.reusable else "done"
        self.busy = False
        if sink is not None:
            sink.body_done(complete, reason)
        if self.reusable:
            if self.on_idle is not None:
                self.on_idle(self)
        elif not self.lost:
            self.transport.loseConnection()
