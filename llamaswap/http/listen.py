"""
Where llamaswap listens: the C{--listen} address (the original's
C{HOST:PORT} and C{:PORT} forms, or any Twisted server endpoint
description), and the service that listens there.
"""

from __future__ import annotations

import re

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_TLS_PORT = 8443
ENDPOINT_TYPES = {"tcp", "tcp6", "ssl", "unix", "systemd", "tls", "le", "lets", "onion"}
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(?P<port>\d+)$")


TLS_MISSING = "HTTPS needs TLS support, which is not installed: pip install 'llamaswap[tls]'"


class ListenError(ValueError):
    pass


def tls_available() -> bool:
    """
    Whether Twisted can speak TLS here (pyOpenSSL is installed).  TLS is an
    extra because loading it costs every llamaswap process about 12 MB,
    whether or not it uses HTTPS.
    """
    try:
        import OpenSSL  # noqa: F401
    except ImportError:
        return False
    return True


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint_description(listen: str | None, cert_file: str | None = None, key_file: str | None = None) -> str:
    """
    Turn a C{--listen} value (and the TLS files) into a Twisted server
    endpoint description.
    """
    tls = bool(cert_file and key_file)
    if bool(cert_file) != bool(key_file):
        raise ListenError("Both --tls-cert-file and --tls-key-file must be provided for TLS.")
    if not listen:
        listen = f"{DEFAULT_HOST}:{DEFAULT_TLS_PORT if tls else DEFAULT_PORT}"
    match = _HOST_PORT.match(listen)
    if match and match.group("host").lower() not in ENDPOINT_TYPES:
        host = match.group("host").strip("[]")
        port = int(match.group("port"))
        if port > 65535:
            raise ListenError(f"invalid port in --listen {listen!r}")
        kind = "ssl" if tls else "tcp"
        if ":" in host and kind == "tcp":
            kind = "tcp6"
        description = f"{kind}:{port}"
        if host:
            description += f":interface={_escape(host)}"
    else:
        description = listen
        if tls:
            kind = listen.split(":", 1)[0]
            if kind not in ("tcp", "tcp6"):
                raise ListenError(
                    "--tls-cert-file/--tls-key-file need a HOST:PORT or tcp: listen address "
                    f"(got {listen!r}); for other endpoints put the certificate in the description"
                )
            description = "ssl:" + listen.split(":", 1)[1]
    if tls:
        description += f":certKey={_escape(cert_file)}:privateKey={_escape(key_file)}"
    if description.split(":", 1)[0] in ("ssl", "tls") and not tls_available():
        raise ListenError(TLS_MISSING)
    return description


def display_url(description: str) -> str:
    """
    A human-friendly address for the startup log line.
    """
    parts = description.split(":")
    scheme = "https" if parts[0] == "ssl" else "http"
    if parts[0] in ("tcp", "tcp6", "ssl") and len(parts) > 1:
        host = "0.0.0.0"
        for part in description.split(":interface=")[1:2]:
            host = re.split(r"(?<!\\):", part)[0].replace("\\:", ":")
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{parts[1]}"
    return description



class ListeningService(Service):
    """
    Listens on a server endpoint while running.

    A failure that is known at once (the port is taken, the certificate is
    unreadable) is raised by C{startService}, so that C{twistd} stops with
    it; one that comes later is logged.  C{port} is the listening port once
    there is one.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory):
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._waiters: list[Deferred] = []

    def when_listening(self) -> Deferred:
        """
        A Deferred that fires with the port once it listens.
        """
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        super().startService()
        outcome: list = []
        listening = self.endpoint.listen(self.factory)
        listening.addBoth(outcome.append)
        if not outcome:
            # An endpoint that listens later (systemd, onion...).
            listening.addBoth(self._listened)
            return
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self._listened(outcome[0])

    def _listened(self, result) -> None:
        if isinstance(result, Failure):
            log.failure("cannot listen on {endpoint}", result, endpoint=self.endpoint)
            return
        self.port = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(result)

    def stopService(self) -> Deferred | None:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None
