"""
Profiles: named sets of model id rewrites, switched at run time.

One profile or none is active (none after start and after every reload).
While a profile is active, a request for one of its pins is served by the
pin's target instead -- a model, alias, peer model or selector -- and a pin
with no target makes that id unavailable (404).  Pins apply before
everything else: aliases, selectors, filters, routing.
"""

from __future__ import annotations

from typing import Callable

from llamaswap.config import Config

NOT_PINNED = object()


class UnknownProfile(KeyError):
    pass


class Profiles:
    def __init__(self, config: Config, on_change: Callable[[str | None], None] | None = None):
        self.config = config
        self.active: str | None = None
        self._on_change = on_change

    def reconfigure(self, config: Config) -> None:
        """
        A new configuration: no profile is active any more.
        """
        self.config = config
        self.activate(None)

    def activate(self, name: str | None) -> None:
        """
        Make C{name} the active profile (C{None}: none).

        @raise UnknownProfile: no profile has that name.
        """
        if name is not None and name not in self.config.profiles:
            raise UnknownProfile(name)
        changed = name != self.active
        self.active = name
        if changed and self._on_change is not None:
            self._on_change(name)

    def pin(self, requested: str):
        """
        The target the active profile pins C{requested} to ("" for
        unavailable), or L{NOT_PINNED}.
        """
        if self.active is None:
            return NOT_PINNED
        return self.config.profiles[self.active].pins.get(requested, NOT_PINNED)

    def pin_path(self, path: str) -> tuple[str, str] | None:
        """
        For C{/upstream/<pin>/...}: the longest pin that C{path} is or starts
        with, and its target.
        """
        if self.active is None:
            return None
        path = path.lstrip("/")
        best = None
        for pin, target in self.config.profiles[self.active].pins.items():
            if (path == pin or path.startswith(pin + "/")) and (best is None or len(pin) > len(best[0])):
                best = (pin, target)
        return best

    def describe(self) -> dict:
        """
        The answer of C{GET /api/profiles}.
        """
        return {
            "active": self.active,
            "profiles": [
                {"id": profile.id, "description": profile.description, "pins": dict(profile.pins)}
                for profile in sorted(self.config.profiles.values(), key=lambda profile: profile.id)
            ],
        }
