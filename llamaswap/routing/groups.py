"""
Groups: which models may run together.

Each model belongs to exactly one group (models listed in none share the
default group, with C{swap} and C{exclusive} on).  Two models conflict --
one must stop before the other starts -- when

  - they are different members of one group with C{swap: true}, or
  - the first belongs to a group with C{exclusive: true} and the second to
    another group that is not C{persistent}.

The scheduler (L{llamaswap.routing.scheduler}) uses this table to decide
swaps; nothing else here has state.
"""

from __future__ import annotations

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
