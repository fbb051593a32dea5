"""
Groups: which models may run together.

Each model belongs to exactly one group (models listed in none share the
default group, with C{swap} and C{exclusive} on).  Two models conflict --
one must stop before the other starts -- when

  - they are different members of one group with C{swap: true}, or
  - the first belongs to a group with C{exclusive: true} and the second to
    another group that is not C{persistent}.

The scheduler (L{llamaswap.routing.scheduler}) asks the L{GroupSwapper}
which running models stand in the way of the one it wants to start.
"""

from __future__ import annotations

from typing import Callable, Iterable

from llamaswap.config import Config


def conflicts(config: Config) -> dict[str, frozenset[str]]:
    """
    For each model, the models that must not run while it does.
    """
    group_of = {member: group for group in config.groups.values() for member in group.members}
    result = {}
    for model_id in config.models:
        group = group_of[model_id]
        blocked = set()
        if group.swap:
            blocked.update(member for member in group.members if member != model_id)
        if group.exclusive:
            for other in config.groups.values():
                if other.id != group.id and not other.persistent:
                    blocked.update(other.members)
        result[model_id] = frozenset(blocked)
    return result


class GroupSwapper:
    """
    Swap decisions of the group router: a model evicts the running models
    it conflicts with.
    """

    def __init__(self, config: Config):
        self._conflicts = conflicts(config)

    def evictions(self, target: str, active: Iterable[str]) -> set[str]:
        """
        The running models (of C{active}) that must stop before C{target}
        may run.
        """
        blocked = self._conflicts.get(target, frozenset())
        return {model for model in active if model in blocked}

    def blocked_now(self, target: str, is_active: Callable[[str], bool]) -> bool:
        return any(is_active(model) for model in self._conflicts.get(target, ()))
