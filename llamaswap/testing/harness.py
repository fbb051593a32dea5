"""
A whole llamaswap in memory: the real service (routes, gateway, scheduler,
model processes, proxy), on a fake clock, whose model servers are the fake
upstream run in-process over a L{MemoryNetwork}, and an HTTP client (treq)
connected to it through the same network.

Time only passes when a test says so (L{InMemoryLlamaswap.run} jumps from
one timer to the next), so a test of a 30-second health check takes
milliseconds and never flakes.
"""

from __future__ import annotations

import os
import signal
import textwrap
from functools import partial
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from llamaswap.config import parse_config
from llamaswap.http.bodies import BytesProducer
from llamaswap.models.process import ModelProcess
from llamaswap.service import LlamaswapService
from llamaswap.testing.fakes import FakeProcessTransport, FakeReactor
from llamaswap.testing.memory import MemoryNetwork
from llamaswap.testing.upstream import FakeServer, Host, parse_args
from llamaswap.testing.websocket import WebSocketClient

LISTEN_HOST = "127.0.0.1"
LISTEN_PORT = 8080
FAKE_UPSTREAM = ["-m", "llamaswap.testing.upstream"]
# Tells which in-memory llamaswap spawned a model server.
OWNER_VARIABLE = "LLAMASWAP_MEMORY_OWNER"


class RawClient(Protocol):
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.closed = False

    @property
    def received(self) -> bytes:
        return b"".join(self.pieces)

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)
        self.size += len(data)

    def connectionLost(self, reason) -> None:
        self.closed = True


class Collector(Protocol):
    """
    Collects a response body with the fake time each piece arrived;
    C{reason} says how it ended (C{None} while it goes on).
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.pieces: list[tuple[float, bytes]] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append((self.clock.seconds(), data))

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason

    @property
    def data(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


def _in_memory_body(data) -> BytesProducer:
    """
    treq's body producers work through a cooperator on the global reactor,
    which never runs here: hand over bytes in one piece instead.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes):
        data = data.read()
    return BytesProducer(data)


@define(eq=False)
class MemoryProcess:
    """
    A "spawned" model server: its fake process transport and, when the
    command is the fake upstream, the server running in-process.
    """

    transport: FakeProcessTransport
    command: list[str]
    owner: str = ""
    server: FakeServer | None = None
    exited: bool = False
    signals: list[int] = field(factory=list)


class MemoryWorld:
    """
    What several in-memory llamaswaps share: the fake clock, the network,
    and the model servers they "spawned" (the fake upstream, run in-process).
    """

    def __init__(self) -> None:
        self.reactor = FakeReactor()
        self.network = MemoryNetwork(self.reactor)
        self.processes: list[MemoryProcess] = []
        self.reactor.spawn_hook = self._spawned

    def _spawned(self, transport: FakeProcessTransport) -> None:
        args = list(transport.args)
        command = args[args.index("--") + 1 :] if "--" in args else args
        process = MemoryProcess(transport, command, owner=(transport.env or {}).get(OWNER_VARIABLE, ""))
        self.processes.append(process)
        if command[1:3] == FAKE_UPSTREAM:
            options = parse_args(command[3:])
            host = Host(
                clock=self.reactor,
                environ=dict(transport.env or {}),
                print=lambda message: transport.output((message + "\n").encode()),
                exit=lambda code: self._exit(process, code=code),
            )

            def listen(site):
                return self.network.listen(options.host, options.port, site, owner=process)

            process.server = FakeServer(options, host, listen)
            process.server.start(transport.pid)

    def killpg(self, pid: int, number: int) -> None:
        for process in self.processes:
            if process.transport.pid == pid and not process.exited:
                process.signals.append(number)
                if number == signal.SIGKILL:
                    self._exit(process, signal_number=signal.SIGKILL)
                elif number == signal.SIGTERM:
                    if process.server is None:
                        self._exit(process, signal_number=signal.SIGTERM)
                    elif process.server.terminate():
                        self._exit(process, code=0)
                return
        raise ProcessLookupError(pid)

    def _exit(self, process: MemoryProcess, code: int = 0, signal_number: int | None = None) -> None:
        if process.exited:
            return
        process.exited = True
        if process.server is not None:
            process.server.stop()
        self.network.kill(process)
        # The exit is noticed on a later turn of the reactor, as a real one is.
        self.reactor.callLater(0, process.transport.exit, code, signal_number)


class InMemoryLlamaswap:
    """
    llamaswap with C{config_text}, in memory.  C{url} is where its HTTP
    client (C{client}, a treq client) reaches it.
    """

    def __init__(
        self,
        config_text: str,
        environ: dict[str, str] | None = None,
        world: MemoryWorld | None = None,
        port: int = LISTEN_PORT,
    ):
        self.world = world if world is not None else MemoryWorld()
        self.reactor = self.world.reactor
        self.network = self.world.network
        self.port = port
        environ = dict(environ if environ is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        environ[OWNER_VARIABLE] = str(port)
        self.config = parse_config(textwrap.dedent(config_text), environ=os.environ)
        self.service = LlamaswapService(
            self.config,
            listen=None,
            reactor=self.reactor,
            endpoints=self.network,
            process_factory=partial(
                ModelProcess, killpg=self.world.killpg, environ=environ, cpu_time=lambda pid: None
            ),
        )
        self.network.listen(LISTEN_HOST, port, self.service.site)
        self.url = f"http://{LISTEN_HOST}:{port}"
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        self.client = HTTPClient(
            Agent.usingEndpointFactory(self.reactor, self.network, pool=pool),
            data_to_body_producer=_in_memory_body,
        )
        self.service.startService()

    # ------------------------------------------------------------ time

    def run(self, deferred: Deferred, timeout: float = 300.0) -> Any:
        """
        Let time pass until C{deferred} has a result (at most C{timeout}
        fake seconds); return it, or raise its failure.
        """
        outcome: list = []
        deferred.addBoth(outcome.append)
        deadline = self.reactor.seconds() + timeout
        while True:
            self.network.flush()
            if outcome:
                break
            if not self._advance_to_next_call(deadline):
                raise AssertionError(f"no result after {timeout:g} fake seconds")
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} fake seconds pass, running every timer due on the way.
        """
        deadline = self.reactor.seconds() + seconds
        self.network.flush()
        while self._advance_to_next_call(deadline):
            self.network.flush()
        self.reactor.advance(max(0.0, deadline - self.reactor.seconds()))
        self.network.flush()

    def _advance_to_next_call(self, deadline: float) -> bool:
        now = self.reactor.seconds()
        due = [call.getTime() for call in self.reactor.getDelayedCalls()]
        due = [when for when in due if when <= deadline]
        if not due:
            return False
        self.reactor.advance(max(0.0, min(due) - now))
        return True

    def stop(self) -> None:
        stopping = self.service.stopService()
        if stopping is not None:
            self.run(stopping)

    # ------------------------------------------------------------ HTTP

    def get(self, path: str, **kwargs) -> Deferred:
        return self.client.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs) -> Deferred:
        return self.client.post(self.url + path, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> Deferred:
        return self.client.request(method, self.url + path, **kwargs)

    def fetch(self, method: str, path: str, **kwargs) -> tuple[Any, bytes]:
        """
        Make a request and read its whole answer: (response, body).
        """
        response = self.run(self.request(method, path, **kwargs))
        return response, self.run(response.content())

    def connect(self) -> RawClient:
        """
        A raw connection to llamaswap, for bytes no well-behaved client
        would send.
        """
        return self.run(self.network.connect(LISTEN_HOST, self.port, Factory.forProtocol(RawClient)))

    def websocket(self, path: str, *headers: bytes) -> WebSocketClient:
        """
        Open a WebSocket to C{path}; returns once the answer's head came
        (look at C{status}, C{accepted}).
        """
        client = WebSocketClient(path.encode(), headers=headers)
        self.run(self.network.connect(LISTEN_HOST, self.port, Factory.forProtocol(lambda: client)))
        self.run(client.open)
        return client

    def raw(self, data: bytes, seconds: float = 5.0) -> bytes:
        """
        Send C{data} on a new connection and return what comes back within
        C{seconds} (or until llamaswap closes the connection).
        """
        client = self.connect()
        client.transport.write(data)
        self.advance(seconds)
        return client.received

    def collect(self, response) -> Collector:
        """
        Start receiving C{response}'s body as it comes (see L{advance}).
        """
        collector = Collector(self.reactor)
        response.deliverBody(collector)
        return collector

    def chat(self, model: str, **extra) -> tuple[Any, bytes]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return self.fetch("POST", "/v1/chat/completions", json=body)

    # ------------------------------------------------------------ models

    def state(self, model_id: str) -> str:
        return self.service.manager.processes[model_id].state

    @property
    def processes(self) -> list[MemoryProcess]:
        """
        The model servers this llamaswap started.
        """
        return [process for process in self.world.processes if process.owner == str(self.port)]

    def live(self) -> list[MemoryProcess]:
        return [process for process in self.processes if not process.exited]
