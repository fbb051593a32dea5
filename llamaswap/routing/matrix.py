"""
Swap decisions of the matrix router: the wanted model may run with the
running models one set allows; the rest are evicted, choosing the set that
evicts the cheapest (see L{llamaswap.config.matrix} for the language and
the solver).
"""

from __future__ import annotations

from typing import Callable, Iterable

from llamaswap.config import Config
from llamaswap.observe.logs import ProxyLog


class MatrixSwapper:
    def __init__(self, config: Config, log: ProxyLog | None = None):
        self.program = config.matrix.program
        self.costs = dict(config.matrix.evict_costs)
        self.models = tuple(config.models)
        self._log = log
        self._last: tuple | None = None

    def evictions(self, target: str, active: Iterable[str]) -> set[str]:
        running = [model for model in active if model != target]
        decision = self.program.solve(target, running, self.costs)
        if decision.evict and self._log is not None and self._last != (target, tuple(running)):
            self._last = (target, tuple(running))
            self._log.info(
                f"matrix: <{target}> set={decision.set_name or '(alone)'} evict={sorted(decision.evict)} "
                f"keep={list(decision.kept_set)} cost={decision.cost}"
            )
        return set(decision.evict)

    def blocked_now(self, target: str, is_active: Callable[[str], bool]) -> bool:
        return bool(self.evictions(target, [model for model in self.models if is_active(model)]))
