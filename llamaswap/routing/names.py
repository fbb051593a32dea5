"""
Which server answers a requested model name.

In order: the active profile's pin (which may disable the name), then a
selector's choice, then a local model id or alias, then a peer's model --
C{<peer>/<model>} always, an unqualified id only when exactly one peer has
it and no local model or alias does.
"""

from __future__ import annotations

from typing import Callable

from attrs import frozen

from llamaswap.config import Config
from llamaswap.routing.profiles import NOT_PINNED, Profiles
from llamaswap.routing.selectors import NoTarget, Selectors


class UnknownModel(LookupError):
    """
    Nothing serves the name (or the active profile disabled it).
    """

    def __init__(self, message: str, disabled: bool = False):
        super().__init__(message)
        self.disabled = disabled


class NoTargetNow(Exception):
    """
    A selector has nothing to choose at the moment (503).
    """


@frozen
class Resolution:
    """
    Where a request goes.

    @ivar name: the model name after pins and selectors: what the request
        body's C{model} becomes, and what C{setParamsByID} is keyed by.
    @ivar model_id: the local model that serves it, or C{None}.
    @ivar peer: the (peer id, peer's model id) that serves it, or C{None}.
    @ivar release: to call when the request is over (a selector counts it).
    """

    name: str
    model_id: str | None = None
    peer: tuple[str, str] | None = None
    selector: str | None = None
    release: Callable[[], None] = lambda: None


class Names:
    def __init__(self, config: Config, profiles: Profiles, selectors: Selectors):
        self.config = config
        self.profiles = profiles
        self.selectors = selectors

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def resolve(self, requested: str) -> Resolution:
        """
        @raise UnknownModel: nothing serves C{requested}.
        @raise NoTargetNow: its selector cannot choose now.
        """
        name = requested
        pinned = self.profiles.pin(requested)
        if pinned is not NOT_PINNED:
            if not pinned:
                raise UnknownModel(
                    f"model {requested} is not available while profile '{self.profiles.active}' is active",
                    disabled=True,
                )
            name = pinned
        selector = None
        release: Callable[[], None] = _nothing
        if name in self.selectors:
            selector = name
            try:
                name, release = self.selectors.choose(selector)
            except NoTarget as error:
                raise NoTargetNow(str(error)) from None
        model_id = self.config.real_model_name(name)
        if model_id is not None:
            return Resolution(name, model_id=model_id, selector=selector, release=release)
        peer = self.config.peer_model(name)
        if peer is not None:
            return Resolution(name, peer=peer, selector=selector, release=release)
        release()
        raise UnknownModel(f"could not find real modelID for {requested}")


def _nothing() -> None:
    pass
