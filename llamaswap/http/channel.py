"""
The server side of one HTTP/1.1 connection.

Twisted's channel reads a request head line by line in Python and checks
each header as it comes: about a tenth of the CPU a proxied request costs.
Here the head is collected whole and handed to llhttp, Node's C parser
(through C{httptools}), which also refuses what must be refused -- bad
request lines, invalid header names and values, ambiguous
Content-Length/Transfer-Encoding combinations.  Everything after the head
stays Twisted's: the request object, body decoding and its size limits,
pipelining, persistence, C{Expect: 100-continue}, timeouts, flow control
and responses.

Answers are sent as soon as they are written (L{send_now}) rather than on
the reactor's next pass, and an answer's head goes out in the same send as
its first body bytes (L{JoinedHeadRequest}).

The channel drives Twisted's through the steps its own line parser takes
(the request line kept for C{allContentReceived}, the body decoder chosen
by C{_maybeChooseTransferDecoder}): tests/http/test_channel.py is what
notices a Twisted release that changes them.
"""

from __future__ import annotations

import re
from typing import Callable

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.web import http, server
from twisted.web.http_headers import Headers

from llamaswap.protocols.sending import send_now

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_LENGTH_HEADERS = {b"content-length": b"Content-Length", b"transfer-encoding": b"Transfer-Encoding"}


def _ascii_request_line(line: bytes) -> bytes:
    """
    The request line with bytes beyond ASCII percent-encoded: llhttp refuses
    them, and clients (curl with a model name in a path) send them raw.  A
    server decoding the path gets the same bytes either way.
    """
    return re.sub(rb"[\x80-\xff]", lambda match: b"%%%02X" % match.group()[0], line)


class _Head:
    """
    What llhttp found in one request head.
    """

    __slots__ = ("url", "headers", "complete")

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


class LlamaswapChannel(http.HTTPChannel):
    """
    An HTTP/1.1 connection whose request heads are parsed by llhttp, and
    whose incoming bytes can be taken away from HTTP altogether, for a
    request that upgrades the connection to another protocol (a WebSocket
    relayed to a model server).

    Twisted's generic channel would also speak HTTP/2 when the optional
    C{h2} package is installed; llamaswap does not install it, so this
    plain HTTP/1.1 channel loses nothing.
    """

    receiver: Callable[[bytes], None] | None = None
    _joined: list[bytes] | None = None  # what is written while joining writes
    _host = None

    def __init__(self):
        super().__init__()
        self._head = bytearray()

    def getHost(self):
        # asked for every request; it is a system call, and it never changes
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def divert_input(self, receiver: Callable[[bytes], None]) -> None:
        """
        From now on, give every byte the client sends to C{receiver}; the
        connection closes after the current response, whatever it is.
        """
        self.receiver = receiver
        self.persistent = False

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        # Line mode (Twisted's name): between requests.  Raw mode: a body is
        # arriving, or a request is being answered and what follows waits.
        while data:
            if self.receiver is not None:
                self.receiver(data)
                return
            if not self.line_mode:
                super().rawDataReceived(data)
                return
            data = self._head_data(data)

    def _head_data(self, data: bytes) -> bytes:
        """
        Collect a request head; once complete, start its request and return
        what followed it.
        """
        if not self.persistent:
            return b""  # the last request closes the connection: nothing more is read
        head = self._head
        searched = max(len(head) - 3, 0)
        head += data
        if searched == 0:
            # empty lines before a request are skipped (old browsers send
            # one after a POST)
            while head.startswith(b"\r\n"):
                del head[:2]
        end = head.find(b"\r\n\r\n", searched)
        if end < 0:
            if len(head) > self.totalHeadersSize:
                self._bad_request()
            return b""
        end += 4
        if end > self.totalHeadersSize:
            self._bad_request()
            return b""
        rest = bytes(head[end:])
        self._head = bytearray()
        if not self._request_head(bytes(head[:end])):
            return b""
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return rest

    def _request_head(self, data: bytes) -> bool:
        """
        Parse one complete head and start its request; C{False} when it was
        refused.
        """
        line_end = data.find(b"\r\n")
        if not data[:line_end].isascii():
            data = _ascii_request_line(data[:line_end]) + data[line_end:]
        found = _Head()
        parser = HttpRequestParser(found)
        try:
            parser.feed_data(data)
        except HttpParserUpgrade:
            pass  # the request asks to switch protocols: its handler decides
        except HttpParserError:
            self._bad_request()
            return False
        version = parser.get_http_version()
        if not found.complete or version not in _VERSIONS or len(found.headers) > self.maxHeaders:
            self._bad_request()  # HTTP/0.9 has no headers to parse: it is not spoken here
            return False
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        add = request.requestHeaders.addRawHeader
        for name, value in found.headers:
            length_header = _LENGTH_HEADERS.get(name.lower())
            if length_header is not None and not self._maybeChooseTransferDecoder(length_header, value):
                self.persistent = False  # refused (400) by Twisted's choice of body decoder
                return False
            add(name, value)
        self._command = parser.get_method()
        self._path = found.url
        self._version = _VERSIONS[version]
        self.allHeadersReceived()
        return True

    # the response side

    def writeHeaders(self, version, code, reason, headers) -> None:
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)  # Twisted sanitises other shapes
            return
        lines = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        lines.append(b"\r\n")
        self.writeSequence(lines)

    def write(self, data: bytes) -> None:
        if self._joined is not None:
            self._joined.append(data)
        else:
            send_now(self.transport, data)

    def writeSequence(self, iovec) -> None:
        if self._joined is not None:
            self._joined.extend(iovec)
        else:
            send_now(self.transport, b"".join(iovec))

    def join_writes(self) -> None:
        """
        Collect what is written from now on, to send it in one piece with
        L{send_joined}.
        """
        self._joined = []

    def send_joined(self) -> None:
        joined, self._joined = self._joined, None
        if joined:
            send_now(self.transport, b"".join(joined))

    def _bad_request(self) -> None:
        self._head = bytearray()
        self.persistent = False
        self._respondToBadRequestAndDisconnect()


class JoinedHeadRequest(server.Request):
    """
    A request whose answer's head is sent together with the first bytes of
    its body (Twisted writes them separately, which with immediate sends
    would be two packets).
    """

    def write(self, data: bytes) -> None:
        channel = self.channel
        if self.startedWriting or not data or not isinstance(channel, LlamaswapChannel):
            super().write(data)
            return
        channel.join_writes()
        try:
            super().write(data)
        finally:
            channel.send_joined()
