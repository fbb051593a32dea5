#!/usr/bin/env python3
"""
The upstream client's cost per request: llamaswap's lean client against
Twisted's Agent, for the same answers from the same server, in one process
on an in-memory network (no sockets, no reactor: only the Python work each
client does per request, which is what the proxy pays on every request).

    python benchmarks/client.py [-n 20000]
"""

from __future__ import annotations

import argparse
import json
import time

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from llamaswap.http.bodies import BytesProducer
from llamaswap.http.client import UpstreamClient
from llamaswap.testing.memory import MemoryNetwork

ANSWER = json.dumps(
    {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Sun, 29 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
)
REQUEST_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hello"}]}).encode()
REQUEST_HEADERS = [
    (b"Content-Type", b"application/json"),
    (b"User-Agent", b"bench"),
    (b"Accept", b"*/*"),
    (b"X-Forwarded-For", b"127.0.0.1"),
]


class Canned(Protocol):
    """
    Answers every request with the same response.
    """

    def __init__(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(RESPONSE)


class Sink(Protocol):
    def __init__(self) -> None:
        self.size = 0
        self.done = False

    def body_data(self, data: bytes) -> None:  # lean client
        self.size += len(data)

    def body_done(self, complete: bool, reason: str) -> None:
        self.done = complete

    def dataReceived(self, data: bytes) -> None:  # Agent
        self.size += len(data)

    def connectionLost(self, reason) -> None:
        self.done = reason.check(ResponseDone) is not None


def lean(network: MemoryNetwork, clock: Clock):
    client = UpstreamClient(clock, network)
    lines = [name + b": " + value for name, value in REQUEST_HEADERS]

    def one() -> None:
        result = client.exchange(b"POST", b"http://127.0.0.1:9999/v1/chat/completions", lines, REQUEST_BODY)
        received = []
        result.addCallback(received.append)
        network.flush()
        connection, head = received[0]
        sink = Sink()
        connection.read_body(sink)
        network.flush()
        assert head.code == 200 and sink.done and sink.size == len(ANSWER)

    return one


def agent(network: MemoryNetwork, clock: Clock):
    client = Agent.usingEndpointFactory(clock, network, pool=HTTPConnectionPool(clock, persistent=True))
    headers = Headers({name: [value] for name, value in REQUEST_HEADERS})

    def one() -> None:
        result = client.request(
            b"POST", b"http://127.0.0.1:9999/v1/chat/completions", headers, BytesProducer(REQUEST_BODY)
        )
        received = []
        result.addCallback(received.append)
        network.flush()
        response = received[0]
        sink = Sink()
        response.deliverBody(sink)
        network.flush()
        assert response.code == 200 and sink.done and sink.size == len(ANSWER)

    return one


def measure(make, count: int) -> float:
    clock = Clock()
    network = MemoryNetwork(clock)
    network.listen("127.0.0.1", 9999, Factory.forProtocol(Canned))
    one = make(network, clock)
    for _ in range(200):
        one()
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(count // 5):
            one()
        runs.append((time.process_time() - started) / (count // 5) * 1e6)
    return sorted(runs)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per client")
    options = parser.parse_args()
    lean_us = measure(lean, options.n)
    agent_us = measure(agent, options.n)
    print(f"lean client: {lean_us:6.1f} us per request")
    print(f"Agent:       {agent_us:6.1f} us per request ({agent_us / lean_us:.2f}x)")
    print("(both include the in-memory network and the canned server, alike)")


if __name__ == "__main__":
    main()
