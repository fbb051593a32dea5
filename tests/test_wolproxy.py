"""
wol-proxy: magic packets (caught on loopback, never broadcast), holding
requests until the upstream wakes, 408 on timeout, status, and streaming.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from llamaswap.config import parse_config
from llamaswap.service import LlamaswapService
from llamaswap.wolproxy import WolProxyService, magic_packet, parse_mac
from tests.helpers import fake, free_port, free_port_range, sleep
from tests.test_twistd import TWISTD

MAC = "BA:DC:0F:FE:E0:01"


def test_magic_packet_bytes():
    mac = parse_mac(MAC)
    packet = magic_packet(mac)
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("badc0ffee001") * 16
    assert parse_mac("ba-dc-0f-fe-e0-01") == mac


@pytest.mark.parametrize("bad", ["", "BA:DC:0F:FE:E0", "BA:DC:0F:FE:E0:0G", "BADC0FFEE001", "BA:DC-0F:FE:E0:01"])
def test_bad_mac(bad):
    with pytest.raises(ValueError):
        parse_mac(bad)


class PacketCatcher(DatagramProtocol):
    def __init__(self):
        self.packets: list[bytes] = []

    def datagramReceived(self, data, address):
        self.packets.append(data)


@pytest.fixture
def catcher():
    protocol = PacketCatcher()
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    protocol.port = port.getHost().port
    yield protocol
    port.stopListening()


@pytest.fixture
def wolproxy(catcher):
    started = []

    def start(upstream: str, timeout: float = 10) -> tuple[WolProxyService, str]:
        service = WolProxyService(
            reactor=reactor,
            mac=MAC,
            upstream=upstream,
            listen="tcp:0:interface=127.0.0.1",
            timeout=timeout,
            broadcast=f"127.0.0.1:{catcher.port}",
        )
        service.startService()
        started.append(service)
        return service, f"http://127.0.0.1:{service.http.port.getHost().port}"

    yield start
    for service in started:
        pytest_twisted.blockon(service.stopService())


def llamaswap_config():
    return parse_config(
        textwrap.dedent(
            f"""
            startPort: {free_port_range(4)}
            models:
              m:
                cmd: {fake("m")}
            """
        )
    )


@pytest_twisted.inlineCallbacks
def test_wakes_holds_and_forwards(wolproxy, catcher):
    upstream_port = free_port()
    proxy, url = wolproxy(f"http://127.0.0.1:{upstream_port}")
    status = yield (yield treq.get(url + "/status")).text()
    assert status.startswith("status: not ready\nfailures: ")
    held = treq.post(url + "/v1/chat/completions", json={"model": "m"})
    answered = []
    held.addBoth(lambda result: answered.append(True) or result)
    yield sleep(0.3)
    assert catcher.packets == [magic_packet(parse_mac(MAC))]
    assert answered == []
    # the "woken" host comes up
    upstream = LlamaswapService(llamaswap_config(), listen=f"tcp:{upstream_port}:interface=127.0.0.1", reactor=reactor)
    upstream.startService()
    try:
        response = yield held
        assert response.code == 200
        assert json.loads((yield response.content()))["responseMessage"] == "m"
        status = yield (yield treq.get(url + "/status")).text()
        assert status == "status: ready\nfailures: 0\n"
        # once up, everything is proxied, streams included
        response = yield treq.post(url + "/v1/chat/completions", json={"model": "m", "stream": True})
        assert response.headers.getRawHeaders("x-accel-buffering") == ["no"]
        text = yield response.text()
        assert text.rstrip().endswith("data: [DONE]")
        assert len(catcher.packets) == 1
    finally:
        yield upstream.stopService()
    yield sleep(0.2)
    assert proxy.monitor.status == "not ready"


@pytest_twisted.inlineCallbacks
def test_times_out_with_408(wolproxy, catcher):
    proxy, url = wolproxy(f"http://127.0.0.1:{free_port()}", timeout=1)
    started = reactor.seconds()
    response = yield treq.get(url + "/v1/models")
    assert response.code == 408
    assert (yield response.text()) == "timeout"
    assert 0.9 < reactor.seconds() - started < 3
    assert len(catcher.packets) == 1


@pytest_twisted.inlineCallbacks
def test_waking_page_and_events_while_asleep(wolproxy, catcher):
    proxy, url = wolproxy(f"http://127.0.0.1:{free_port()}")
    for path in ("/", "/ui/models"):
        response = yield treq.get(url + path)
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
        page = yield response.text()
        assert "Waking" in page and "/status" in page
    response = yield treq.get(url + "/api/events")
    assert response.code == 204
    assert len(catcher.packets) == 2  # the pages woke it; the event stream did not


def wolproxy_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TWISTD, "-n", "--pidfile=", "wolproxy", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "http://127.0.0.1:1"], "--mac is required"),
        (["--mac", MAC], "--upstream is required"),
        (["--mac", "nope", "--upstream", "http://127.0.0.1:1"], "invalid MAC address"),
        (["--mac", MAC, "--upstream", "127.0.0.1:1"], "invalid upstream URL"),
        (["--mac", MAC, "--upstream", "http://127.0.0.1:1", "--timeout", "0"], "--timeout must be at least 1"),
        (["--mac", MAC, "--upstream", "http://127.0.0.1:1", "--log", "loud"], "--log must be one of"),
    ],
)
def test_argument_errors(args, message):
    result = wolproxy_cli(*args)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_cli_serves_status(catcher):
    port = free_port()
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "wolproxy", "--mac", MAC, "--upstream", f"http://127.0.0.1:{free_port()}",
         "--listen", f"127.0.0.1:{port}", "--broadcast", "127.0.0.1:9", "--log", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    import time
    import urllib.request

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as answer:
                    assert answer.read().decode().startswith("status: not ready")
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
    finally:
        process.terminate()
        process.communicate(timeout=20)
