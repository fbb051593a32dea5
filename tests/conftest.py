"""
Fixtures for integration tests: a llamaswap service running in-process on
the real reactor, on a free loopback port, whose models are the project's
fake upstream started as real child processes.
"""

from __future__ import annotations

import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor

from llamaswap.config import parse_config
from llamaswap.service import LlamaswapService
from llamaswap.testing.harness import InMemoryLlamaswap
from tests.helpers import Running, free_port_range


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
        port = service.http.port.getHost().port
        return Running(service, port)

    yield start
    for service in reversed(started):
        if service.running:
            pytest_twisted.blockon(service.stopService())


@pytest.fixture
def memory():
    """
    Start llamaswap in memory (see L{InMemoryLlamaswap}) with a
    configuration text; stopped at the end of the test.
    """
    started: list[InMemoryLlamaswap] = []

    def start(text: str, **kwargs) -> InMemoryLlamaswap:
        world = InMemoryLlamaswap(text, **kwargs)
        started.append(world)
        return world

    yield start
    for world in reversed(started):
        if world.service.running:
            world.stop()
