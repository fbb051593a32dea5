"""
Fixtures for integration tests: a llamaswap service running in-process on
the real reactor, on a free loopback port, whose models are the project's
fake upstream started as real child processes.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import socket
import sys
import textwrap

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol

from llamaswap.config import parse_config
from llamaswap.events import ProcessStateChanged
from llamaswap.service import LlamaswapService

PYTHON = shlex.quote(sys.executable)


def yaml_quote(text: str) -> str:
    """
    C{text} as a single-quoted YAML scalar, safe anywhere in a config.
    """
    return "'" + text.replace("'", "''") + "'"


def free_port() -> int:
    return free_port_range(1)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_range(count: int) -> int:
    """
    The first of C{count} consecutive free loopback ports, below the
    ephemeral range so that no outgoing connection can take one of them
    between this check and the model server binding it.
    """
    rng = random.Random(os.getpid() ^ id(count) ^ random.getrandbits(32))
    high = max(12000, _ephemeral_low()) - count
    for _ in range(200):
        base = rng.randrange(10000, high)
        try:
            sockets = []
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no free port range")


def fake(respond: str, *flags: str) -> str:
    """
    The cmd of a model served by the fake upstream, quoted for YAML.
    """
    command = [PYTHON, "-m", "llamaswap.testing.upstream", "--port", "${PORT}", "--respond", respond, *flags]
    return yaml_quote(" ".join(command))


def sleep(seconds: float) -> Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class Running:
    """
    A service started by the L{llamaswap} fixture.
    """

    def __init__(self, service: LlamaswapService, port: int):
        self.service = service
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.events: list[ProcessStateChanged] = []
        service.bus.subscribe(self.events.append, ProcessStateChanged)

    def get(self, path: str, **kwargs) -> Deferred:
        return treq.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs) -> Deferred:
        return treq.post(self.url + path, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> Deferred:
        return treq.request(method, self.url + path, **kwargs)

    def process(self, model_id: str):
        return self.service.manager.processes[model_id]

    def state(self, model_id: str) -> str:
        return self.process(model_id).state

    @inlineCallbacks
    def wait_for_state(self, model_id: str, state: str, timeout: float = 10):
        waited = 0.0
        while self.state(model_id) != state:
            if waited > timeout:
                raise AssertionError(f"{model_id} stayed {self.state(model_id)}, wanted {state}")
            yield sleep(0.02)
            waited += 0.02

    def chat(self, model: str, **extra) -> Deferred:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return self.post("/v1/chat/completions", json=body)


@pytest.fixture
def llamaswap():
    """
    Start llamaswap with a configuration text; ${PORT} numbers are taken
    from a free range so tests never collide with anything else.
    """
    started: list[LlamaswapService] = []

    def start(text: str, **kwargs) -> Running:
        text = textwrap.dedent(text)
        if "startPort" not in text:
            text = f"startPort: {free_port_range(12)}\n" + text
        config = parse_config(text)
        service = LlamaswapService(config, listen="tcp:0:interface=127.0.0.1", reactor=reactor, **kwargs)
        service.startService()
        started.append(service)
        port = service.http._waitingForPort.result.getHost().port
        return Running(service, port)

    yield start
    for service in reversed(started):
        if service.running:
            pytest_twisted.blockon(service.stopService())


class Body(Protocol):
    """
    Collects a response body with the time each piece arrived; C{done}
    fires when it ends and C{reason} says how.
    """

    def __init__(self):
        self.pieces: list[tuple[float, bytes]] = []
        self.done: Deferred = Deferred()
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append((reactor.seconds(), data))

    def connectionLost(self, reason) -> None:
        self.reason = reason
        self.done.callback(None)

    @property
    def data(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces)


def read_body(response) -> Deferred:
    """
    The whole body of an Agent response.
    """
    body = Body()
    response.deliverBody(body)
    return body.done.addCallback(lambda _: body.data)


@inlineCallbacks
def json_of(response):
    body = yield response.content()
    return json.loads(body)
