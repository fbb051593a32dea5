"""
Selectors: virtual model ids that pick one of their targets per request.

  - C{pin}: always the first target (the others are for reference);
  - C{warm}: the first target that is ready, else the first one starting,
    else the first one (which then starts);
  - C{spillover}: fill the active targets up to C{spillover} requests each,
    then start the next target; when all are busy, the least busy one
    (ties taken in turn).  Requests are counted from the choice until the
    answer ends.
"""

from __future__ import annotations

from typing import Callable

from llamaswap.config import Config, SelectorConfig
from llamaswap.models.process import READY, SHUTDOWN, STARTING, STOPPING


class NoTarget(Exception):
    """
    The selector has nothing it can choose (all its targets are stopping).
    """


class Selectors:
    """
    @param state_of: the state of a local model's process ("stopped" when
        it is not running).
    """

    def __init__(self, config: Config, state_of: Callable[[str], str]):
        self.state_of = state_of
        self._inflight: dict[tuple[str, str], int] = {}
        self._turn: dict[str, int] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._inflight = {key: count for key, count in self._inflight.items() if key[0] in config.selectors}

    def __contains__(self, name: str) -> bool:
        return name in self.config.selectors

    def choose(self, selector_id: str) -> tuple[str, Callable[[], None]]:
        """
        The target to use for one request, and what to call when that
        request is over.

        @raise NoTarget: nothing can be chosen now.
        """
        selector = self.config.selectors[selector_id]
        if selector.strategy == "pin":
            return selector.targets[0], _nothing
        if selector.strategy == "warm":
            return self._warm(selector), _nothing
        return self._spillover(selector)

    def _local_state(self, target: str) -> str | None:
        model_id = self.config.real_model_name(target)
        return None if model_id is None else self.state_of(model_id)

    def _warm(self, selector: SelectorConfig) -> str:
        for wanted in (READY, STARTING):
            for target in selector.targets:
                if self._local_state(target) == wanted:
                    return target
        return selector.targets[0]

    def _key(self, selector: SelectorConfig, target: str) -> tuple[str, str]:
        model_id = self.config.real_model_name(target)
        if model_id is None:
            peer_id, model = self.config.peer_model(target)
            model_id = f"{peer_id}/{model}"
        return selector.id, model_id

    def _spillover(self, selector: SelectorConfig) -> tuple[str, Callable[[], None]]:
        active, cold = [], []
        for target in selector.targets:
            key = self._key(selector, target)
            busy = self._inflight.get(key, 0)
            state = self._local_state(target)
            if state in (STOPPING, SHUTDOWN):
                continue
            if state in (READY, STARTING) or busy:
                active.append((target, key))
            else:
                cold.append((target, key))
        if not active and not cold:
            raise NoTarget(f"selector {selector.id} has no target available now (all are stopping)")
        if not active:
            chosen = cold[0]
        else:
            least = min(self._inflight.get(key, 0) for _, key in active)
            if least >= selector.spillover and cold:
                chosen = cold[0]
            else:
                tied = [item for item in active if self._inflight.get(item[1], 0) == least]
                turn = self._turn.get(selector.id, 0)
                self._turn[selector.id] = turn + 1
                chosen = tied[turn % len(tied)]
        target, key = chosen
        self._inflight[key] = self._inflight.get(key, 0) + 1
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                if self._inflight.get(key, 0) > 0:
                    self._inflight[key] -= 1

        return target, release


def _nothing() -> None:
    pass
