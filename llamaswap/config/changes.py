"""
What a configuration reload changes, model by model: the models that keep
running untouched are exactly those this finds unchanged.
"""

from __future__ import annotations

from llamaswap.config.records import Config


def changed_models(old: Config, new: Config) -> tuple[set[str], set[str], set[str]]:
    """
    Compare two configurations model by model: (added, removed, changed).

    A model counts as changed when anything that affects how its process
    runs or is reached differs, including the settings of its group.
    """
    added = set(new.models) - set(old.models)
    removed = set(old.models) - set(new.models)
    changed = set()
    for model_id in set(old.models) & set(new.models):
        if old.models[model_id] != new.models[model_id]:
            changed.add(model_id)
        elif _group_shape(old, model_id) != _group_shape(new, model_id):
            changed.add(model_id)
    return added, removed, changed


def _group_shape(config: Config, model_id: str) -> tuple:
    group = config.group_of(model_id)
    return (group.id, group.swap, group.exclusive, group.persistent)
