"""
Readiness probes: the HTTP health check and, for models without one, a
plain connection that must not be refused.
"""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from llamaswap.models.readiness import NotReady, connect_probe, wait_until_ready
from llamaswap.testing.memory import MemoryNetwork


def outcome(deferred):
    results = []
    deferred.addBoth(results.append)
    return results


def test_connect_probe_waits_out_refusals_until_the_server_listens():
    clock = Clock()
    network = MemoryNetwork(clock)
    probe = connect_probe(network)
    waiting = outcome(wait_until_ready(clock, probe, "http://localhost:5800", timeout=15))
    clock.advance(1)
    network.flush()
    assert waiting == []
    network.listen("127.0.0.1", 5800, Factory.forProtocol(Protocol))
    for _ in range(10):
        clock.advance(0.1)
        network.flush()
    assert len(waiting) == 1 and 1.0 <= waiting[0] < 1.2
    assert network.connections == []  # the probe's connection was closed


def test_connect_probe_does_not_wait_out_other_errors():
    noted = []

    class Unresolvable:
        def endpoint(self, scheme, host, port):
            class Endpoint:
                def connect(self, factory):
                    return fail(DNSLookupError("no such host"))

            return Endpoint()

    probe = connect_probe(Unresolvable(), lambda url, why: noted.append((url, why)))
    assert outcome(probe("http://gpu-box:5800")) == [200]
    assert noted == [("http://gpu-box:5800", "DNS lookup failed: no such host.")]


def test_health_check_times_out_with_the_last_reason():
    clock = Clock()
    calls = []

    def probe(url):
        calls.append(clock.seconds())
        return fail(ConnectionRefusedError()) if clock.seconds() < 100 else succeed(200)

    waiting = outcome(wait_until_ready(clock, probe, "http://x/health", timeout=15))
    clock.pump([0.02] * 1000)
    assert waiting[0].check(NotReady)
    assert waiting[0].getErrorMessage() == "health check timed out after 15s (last check of http://x/health: connection refused)"
    gaps = [round(later - earlier, 3) for earlier, later in zip(calls, calls[1:])]
    assert gaps[:10] == [0.02] * 10  # often at first...
    assert 0.7 <= gaps[-2] <= 1.0  # ...and at most once a second after a while
