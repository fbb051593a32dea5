"""
Shared helpers for the unit tests.
"""

from __future__ import annotations

import textwrap

from llamaswap.config import Config, parse_config
from llamaswap.events import EventBus, ProcessStateChanged
from llamaswap.logs import Logs
from llamaswap.process import ModelProcess
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
        self.events: list[ProcessStateChanged] = []
        self.bus.subscribe(self.events.append, ProcessStateChanged)
        self.processes = {
            model_id: ModelProcess(
                model,
                reactor=self.reactor,
                logs=self.logs,
                bus=self.bus,
                probe=self.probe,
                health_check_timeout=self.config.health_check_timeout,
                environ={"PATH": "/usr/bin:/bin", "HOME": "/root"},
                killpg=self.killpg,
            )
            for model_id, model in self.config.models.items()
        }

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
