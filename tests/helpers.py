"""
Shared helpers for the tests: configurations, a harness of model processes
on a fake reactor, free loopback ports, the fake upstream's command line,
and small HTTP conveniences.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import socket
import sys
import textwrap

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol

from llamaswap.config import Config, parse_config
from llamaswap.models.process import ModelProcess
from llamaswap.models.readiness import Probes
from llamaswap.observe.events import EventBus, ProcessStateChanged
from llamaswap.observe.logs import Logs
from llamaswap.testing.fakes import FakeKillpg, FakeReactor, ScriptedProbe


def config_from(text: str) -> Config:
    return parse_config(textwrap.dedent(text))


class ProcessHarness:
    """
    Model processes of a configuration, on a fake reactor, with recorded
    state changes.
    """

    def __init__(self, text: str):
        self.config = config_from(text)
        self.reactor = FakeReactor()
        self.bus = EventBus()
        self.logs = Logs(self.bus, level="debug")
        self.probe = ScriptedProbe()
        self.killpg = FakeKillpg()
        self.cpu: dict[str, float] = {}  # CPU seconds each fake server "used" (None: unknown)
        self.events: list[ProcessStateChanged] = []
        self.bus.subscribe(self.events.append, ProcessStateChanged)
        self.scheduler = None
        self.processes = {
            model_id: ModelProcess(
                model,
                reactor=self.reactor,
                logs=self.logs,
                on_state_change=self._state_changed,
                probe=Probes(http=self.probe, connect=self.probe),
                environ={"PATH": "/usr/bin:/bin", "HOME": "/root"},
                killpg=self.killpg,
                cpu_time=lambda pid, model_id=model_id: self.cpu.get(model_id),
            )
            for model_id, model in self.config.models.items()
        }

    def _state_changed(self, process: ModelProcess, old: str, new: str) -> None:
        # Wired as the model manager wires it: the scheduler first, then the bus.
        if self.scheduler is not None:
            self.scheduler.process_changed(process, new)
        self.bus.publish(ProcessStateChanged(process.id, old, new))

    def transitions(self, model_id: str) -> list[str]:
        return [event.new for event in self.events if event.model == model_id]

    def make_ready(self, model_id: str) -> None:
        """
        Let the model's health check pass at the next poll.
        """
        self.probe.ready.add(self.processes[model_id].config.health_url)

    def transport(self, model_id: str):
        process = self.processes[model_id]
        return process._transport


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

    def __init__(self, service, port: int):
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


@inlineCallbacks
def wait_until(condition, timeout=5.0):
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        yield sleep(0.02)
        waited += 0.02


def multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]], boundary: str = "llamaswap-test-boundary"):
    """
    A multipart/form-data body and its content type, built by hand so a
    test controls every byte (and needs no cooperator to send it).
    """
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        )
    for name, (filename, content_type, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def error_message(body: bytes) -> str:
    """
    The message of llamaswap's JSON error envelope (checking its shape).
    """
    document = json.loads(body)
    assert document["src"] == "llama-swap" and set(document["error"]) == {"message", "type", "param", "code"}
    return document["error"]["message"]
