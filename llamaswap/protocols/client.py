"""
The HTTP/1.1 client connection that relays requests to model servers.

Twisted's Agent is general and careful, and a third of the proxy's time per
request went into it (see benchmarks/README.md).  A reverse proxy needs much
less: send one request, read one response head, pass the body through as it
arrives (dechunked), honour flow control, and reuse the connection when the
response allows it.  That is all this does; anything unusual -- a malformed
response, a connection closed early, no response head in time -- ends the
exchange with a clear error.

The response parser is an explicit state machine: C{_state} names where in
the response we are and C{_READERS} maps each state to the one method that
consumes bytes in it.  The whole table of states:

    idle            no exchange; bytes from the server are an error
    head            status line and headers, up to the blank line
    body-length     a body of known length
    body-until-close  a body that ends when the server closes
    chunk-size      the size line of the next chunk
    chunk-data      the bytes of a chunk
    chunk-end       the CRLF after a chunk's bytes
    trailer         trailer lines after the last chunk
    tunnel          after 101 Switching Protocols: raw bytes both ways
                    until either side closes (a WebSocket)
    done            the exchange ended; the connection is closing
    closed          the connection is gone
"""

from __future__ import annotations

from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from llamaswap.protocols.sending import send_now

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 1024
NO_BODY_STATUSES = frozenset({204, 304})
FRAMING_HEADERS = frozenset({b"connection", b"transfer-encoding", b"content-length"})

IDLE = "idle"
HEAD = "head"
BODY_LENGTH = "body-length"
BODY_UNTIL_CLOSE = "body-until-close"
CHUNK_SIZE = "chunk-size"
CHUNK_DATA = "chunk-data"
CHUNK_END = "chunk-end"
TRAILER = "trailer"
TUNNEL = "tunnel"
DONE = "done"
CLOSED = "closed"
BODY_STATES = frozenset({BODY_LENGTH, BODY_UNTIL_CLOSE, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, TUNNEL})
# States whose data simply ends when the server closes the connection.
ENDS_AT_CLOSE = frozenset({BODY_UNTIL_CLOSE, TUNNEL})


class UpstreamError(Exception):
    """
    The upstream connection failed or sent something we cannot read.
    """


class NoResponse(UpstreamError):
    """
    The connection ended before any response arrived (safe to retry a
    request that was fully in memory on a fresh connection).
    """


class ResponseHeadTimeout(UpstreamError):
    """
    The server accepted the request but sent no response head in time.
    """


class ResponseHead:
    """
    A response's status and headers, as the server sent them (names keep
    their case; order and repeats are kept).
    """

    __slots__ = ("code", "phrase", "raw_headers", "_headers")

    def __init__(self, code: int, phrase: bytes, raw_headers: list[tuple[bytes, bytes]]):
        self.code = code
        self.phrase = phrase
        self.raw_headers = raw_headers
        self._headers: Headers | None = None

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of header C{name} (lower case), or C{None}.
        """
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value
        return None

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers()
            for name, value in self.raw_headers:
                self._headers.addRawHeader(name, value)
        return self._headers


class HeadReceiver(TypingProtocol):
    """
    Told how the wait for a response head ended.
    """

    def head_received(self, head: ResponseHead) -> None: ...

    def head_failed(self, error: Exception) -> None: ...


class BodySink(TypingProtocol):
    def body_data(self, data: bytes) -> None: ...

    def body_done(self, complete: bool, reason: str) -> None: ...


class _DeferredHead:
    """
    A L{HeadReceiver} that fires a Deferred, for callers that want one.
    """

    def __init__(self) -> None:
        self.deferred: Deferred = Deferred()

    def head_received(self, head: ResponseHead) -> None:
        self.deferred.callback(head)

    def head_failed(self, error: Exception) -> None:
        self.deferred.errback(error)


def header_lines(headers: Headers | list[bytes]) -> list[bytes]:
    """
    C{Name: value} lines of a request's headers.
    """
    if isinstance(headers, list):
        return headers
    return [name + b": " + value for name, values in headers.getAllRawHeaders() for value in values]


@implementer(IHandshakeListener)
class UpstreamConnection(Protocol):
    """
    One keep-alive connection; one exchange at a time.

    @ivar busy: an exchange is under way.
    @ivar reusable: the last exchange ended cleanly and the connection may
        carry another.
    """

    def __init__(
        self,
        on_idle: Callable[[UpstreamConnection], None] | None = None,
        clock: IReactorTime | None = None,
        keepalive: bool = False,
        tls_handshake: float = 0,
    ):
        self.on_idle = on_idle
        self.clock = clock
        self._keepalive = keepalive
        self._tls_handshake = tls_handshake
        self._handshake_timer: IDelayedCall | None = None
        self.busy = False
        self.reusable = False
        self.lost = False
        self.used = 0
        self._state = IDLE
        self._buffer = b""
        self._head: HeadReceiver | None = None
        self._head_timer: IDelayedCall | None = None
        self._sink: BodySink | None = None
        self._remaining = 0
        self._keep_alive = True
        self._method = b""
        self._received_anything = False

    # ------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        # Without it, a body following its head in a later write waits for
        # the server's delayed acknowledgement of the head: 40 ms, now and then.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if self._keepalive:
            set_keepalive = getattr(self.transport, "setTcpKeepAlive", None)
            if set_keepalive is not None:
                set_keepalive(True)
        if self._tls_handshake and self.clock is not None:
            self._handshake_timer = self.clock.callLater(self._tls_handshake, self._handshake_timed_out)

    def handshakeCompleted(self) -> None:
        """
        IHandshakeListener: the TLS handshake of an https connection is done.
        """
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self._state == HEAD:
            self._fail_head(UpstreamError(f"TLS handshake not done within {self._tls_handshake:g}s"))
        self.abort()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.handshakeCompleted()  # no handshake to wait for any more
        self.lost = True
        self.reusable = False
        state, self._state = self._state, CLOSED
        if state == HEAD:
            error = NoResponse if not self._received_anything else UpstreamError
            self._fail_head(error(f"connection closed before the response: {reason.getErrorMessage()}"))
        elif state in ENDS_AT_CLOSE:
            self._end_body(True, "")  # the body ran until the close, as announced
        elif state in BODY_STATES:
            self._end_body(False, f"connection lost mid-response: {reason.getErrorMessage()}")

    # ------------------------------------------------------------ sending

    def send(
        self,
        method: bytes,
        target: bytes,
        host: bytes,
        headers: Headers | list[bytes],
        body: bytes | None = None,
        producer=None,
        head_timeout: float | None = None,
        receiver: HeadReceiver | None = None,
    ) -> Deferred | None:
        """
        Send a request.  C{body} (bytes) or C{producer} (an IBodyProducer
        with a known length) is the request body; C{headers} are Headers or
        ready C{Name: value} lines.

        @param head_timeout: seconds to wait for the response head once the
            request is sent; then the exchange fails with
            L{ResponseHeadTimeout}.
        @param receiver: told of the L{ResponseHead} (or the failure); call
            L{read_body} after it to receive the body.
        @return: without a receiver, a Deferred firing with the head.
        """
        if self.busy or self.lost:
            raise UpstreamError("connection not available")
        waiting = None
        if receiver is None:
            receiver = waiting = _DeferredHead()
        self.busy = True
        self.used += 1
        self._state = HEAD
        self._method = method
        self._received_anything = False
        self._keep_alive = True
        self._head = receiver
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host, *header_lines(headers)]
        length = len(body) if body is not None else (producer.length if producer is not None else None)
        if length is not None and (length or method not in (b"GET", b"HEAD")):
            lines.append(b"Content-Length: " + str(length).encode())
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if producer is None:
            send_now(self.transport, head + body if body else head)
        else:
            self.transport.write(head)
            self.transport.registerProducer(producer, True)
            sending = producer.startProducing(self.transport)
            sending.addBoth(self._body_sent)
        if head_timeout is not None and self.clock is not None:
            self._head_timer = self.clock.callLater(head_timeout, self._head_timed_out, head_timeout)
        return waiting.deferred if waiting is not None else None

    def _body_sent(self, result):
        if not self.lost:
            self.transport.unregisterProducer()
        if isinstance(result, Failure):
            self._keep_alive = False
            self.abort()
        return None

    def _head_timed_out(self, seconds: float) -> None:
        self._head_timer = None
        if self._state == HEAD:
            self._fail_head(ResponseHeadTimeout(f"no response headers within {seconds:g}s"))
            self.abort()

    def read_body(self, sink: BodySink) -> None:
        """
        Deliver the body of the response whose head was received to C{sink}.
        """
        self._sink = sink
        if self._state in BODY_STATES:
            self._parse()
        elif self._state == CLOSED:
            sink.body_done(False, "connection lost")

    def write(self, data: bytes) -> None:
        """
        Send the client's bytes on a connection switched to another protocol.
        """
        if self._state != TUNNEL:
            raise UpstreamError("only a switched connection carries raw bytes")
        if not self.lost:
            self.transport.write(data)

    def close(self) -> None:
        """
        Close once what was written is sent (the other side of a tunnel closed).
        """
        if not self.lost and self.transport is not None:
            self.reusable = False
            self.transport.loseConnection()

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
        if self._state == IDLE:
            # Nothing was asked: an idle connection talking is broken.
            self.abort()
            return
        self._received_anything = True
        self._buffer = self._buffer + data if self._buffer else data
        self._parse()

    def _parse(self) -> None:
        """
        Feed the buffer to the reader of the current state until one of
        them needs more bytes (or a body has nowhere to go yet).
        """
        while True:
            state = self._state
            if state in BODY_STATES and self._sink is None:
                return  # waiting for read_body
            reader = self._READERS.get(state)
            if reader is None or not reader(self):
                return

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._malformed_head("response head too large")
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
            self._malformed_head(f"malformed status line from upstream: {lines[0][:80]!r}")
            return False
        if 100 <= code < 200 and code != 101:
            return True  # an interim answer (100 Continue): the real one follows
        headers = []
        framing: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                self._malformed_head(f"malformed header line from upstream: {line[:80]!r}")
                return False
            value = value.strip()
            headers.append((name, value))
            lowered = name.lower()
            if lowered in FRAMING_HEADERS:
                framing.setdefault(lowered, []).append(value)
        next_state = self._body_framing(version, code, framing)
        if next_state is None:
            return False
        self._cancel_head_timer()
        self._state = next_state
        receiver, self._head = self._head, None
        receiver.head_received(ResponseHead(code, status[2] if len(status) > 2 else b"", headers))
        return True

    def _body_framing(self, version: bytes, code: int, framing: dict[bytes, list[bytes]]) -> str | None:
        """
        The state the body starts in, by RFC 9112's rules for how a
        response body is delimited; C{None} (and the exchange failed) for an
        unreadable Content-Length.
        """
        if code == 101:
            self._keep_alive = False
            return TUNNEL
        connection = b",".join(framing.get(b"connection", ())).lower()
        if version == b"HTTP/1.0":
            self._keep_alive = b"keep-alive" in connection
        elif b"close" in connection:
            self._keep_alive = False
        if self._method == b"HEAD" or code in NO_BODY_STATUSES:
            self._remaining = 0
            return BODY_LENGTH
        if b"chunked" in b",".join(framing.get(b"transfer-encoding", ())).lower():
            return CHUNK_SIZE
        lengths = framing.get(b"content-length")
        if not lengths:
            self._keep_alive = False
            return BODY_UNTIL_CLOSE
        try:
            values = {int(value) for value in b",".join(lengths).split(b",")}
            if len(values) != 1 or min(values) < 0:
                raise ValueError(lengths)
        except ValueError:
            self._malformed_head(f"invalid Content-Length from upstream: {lengths!r}")
            return None
        self._remaining = values.pop()
        return BODY_LENGTH

    def _relay(self) -> None:
        """
        Pass on as much of the buffer as the current body (or chunk) still has.
        """
        data = self._buffer[: self._remaining]
        self._buffer = self._buffer[len(data) :]
        self._remaining -= len(data)
        if data:
            self._sink.body_data(data)

    def _read_body_length(self) -> bool:
        if self._remaining:
            self._relay()
        if self._remaining == 0:
            self._end_body(True, "")
        return False

    def _read_body_until_close(self) -> bool:
        data, self._buffer = self._buffer, b""
        if data:
            self._sink.body_data(data)
        return False

    def _read_chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_CHUNK_LINE:
                self._malformed_body("malformed chunk size from upstream")
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                raise ValueError(line)
        except ValueError:
            self._malformed_body(f"malformed chunk size from upstream: {line[:40]!r}")
            return False
        if size == 0:
            self._state = TRAILER
        else:
            self._remaining = size
            self._state = CHUNK_DATA
        return True

    def _read_chunk_data(self) -> bool:
        self._relay()
        if self._remaining:
            return False
        self._state = CHUNK_END
        return True

    def _read_chunk_end(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] != b"\r\n":
            self._malformed_body("malformed chunk ending from upstream")
            return False
        self._buffer = self._buffer[2:]
        self._state = CHUNK_SIZE
        return True

    def _read_trailer(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        if line == b"":
            self._end_body(True, "")
            return False
        return True  # a trailer field: read and dropped

    _READERS = {
        HEAD: _read_head,
        BODY_LENGTH: _read_body_length,
        BODY_UNTIL_CLOSE: _read_body_until_close,
        TUNNEL: _read_body_until_close,
        CHUNK_SIZE: _read_chunk_size,
        CHUNK_DATA: _read_chunk_data,
        CHUNK_END: _read_chunk_end,
        TRAILER: _read_trailer,
    }

    # ------------------------------------------------------------ outcomes

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def _fail_head(self, error: Exception) -> None:
        self._cancel_head_timer()
        self.reusable = False
        receiver, self._head = self._head, None
        if receiver is not None:
            receiver.head_failed(error)

    def _malformed_head(self, message: str) -> None:
        self._state = DONE
        self._fail_head(UpstreamError(message))
        self.abort()

    def _malformed_body(self, message: str) -> None:
        self._end_body(False, message)
        self.abort()

    def _end_body(self, complete: bool, reason: str) -> None:
        sink, self._sink = self._sink, None
        # Bytes beyond the response mean we lost track: do not reuse.
        self.reusable = complete and self._keep_alive and not self.lost and not self._buffer
        self._buffer = b""
        if self._state != CLOSED:
            self._state = IDLE if self.reusable else DONE
        self.busy = False
        if sink is not None:
            sink.body_done(complete, reason)
        if self.reusable:
            if self.on_idle is not None:
                self.on_idle(self)
        elif not self.lost:
            self.transport.loseConnection()
