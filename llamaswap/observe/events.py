"""
The in-process publish/subscribe service.

Model state changes, log output, token metrics, preloads and configuration
reloads are published here as small immutable records; the HTTP streams
(C{/api/events}, C{/logs/stream}) and the tests subscribe to them.

Publishing never waits for anybody: a subscriber is a plain callback run on
the reactor thread, and the network-facing subscribers put what they receive
in a bounded buffer (see L{llamaswap.protocols.streaming}) so that a slow
client can only lose its own oldest messages, never slow the publisher or
grow memory.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import frozen
from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


@frozen
class ProcessStateChanged:
    model: str
    old: str
    new: str


@frozen
class QueueChanged:
    """
    The requests queued per model changed (models with none are left out).
    """

    queued: Any  # dict[str, int]


@frozen
class ModelHealthChanged:
    """
    A model's failed state was set or cleared without a process state
    change (an operator's reset).
    """

    model: str


@frozen
class ModelEvicted:
    """
    A model was stopped to make room for another (a swap).
    """

    model: str


@frozen
class ConfigFileChanged:
    """
    The configuration file changed; C{state} is "start" when a reload
    begins and "end" once the new configuration is serving.
    """

    state: str


@frozen
class LogData:
    source: str  # "proxy" or "upstream"
    data: bytes
    model: str = ""  # the model server that printed it (upstream only)


@frozen
class ActivityRecorded:
    """
    A metered request is over and in the activity log: C{row} holds its
    values in the activity database's column order (model, status,
    tokens, ...).
    """

    id: int
    model: str
    row: tuple = ()


@frozen
class ProfileChanged:
    """
    Another profile (or none: C{None}) became active.
    """

    active: str | None


@frozen
class ModelPreloaded:
    model: str
    success: bool


class Subscription:
    """
    One subscriber's registration; L{cancel} it when done.
    """

    def __init__(
        self,
        bus: EventBus,
        callback: Callable[[Any], None],
        types: tuple[type, ...],
        on_close: Callable[[], None] | None,
    ):
        self._bus = bus
        self.callback = callback
        self.types = types
        self.on_close = on_close
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._bus._subscriptions.remove(self)
            self._bus._receivers.clear()


class EventBus(Service):
    """
    Fan events out to subscribers, in publication order.
    """

    name = "events"

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        # who receives each type of event, worked out once per change of
        # subscriptions (events are published far more often)
        self._receivers: dict[type, tuple[Subscription, ...]] = {}

    def subscribe(
        self,
        callback: Callable[[Any], None],
        *types: type,
        on_close: Callable[[], None] | None = None,
    ) -> Subscription:
        """
        Call C{callback(event)} for every future event of one of C{types}
        (all events when none are given).  C{on_close} runs if the service
        stops while the subscription is active, so streams can end cleanly.
        """
        subscription = Subscription(self, callback, types, on_close)
        self._subscriptions.append(subscription)
        self._receivers.clear()
        return subscription

    def _receivers_of(self, kind: type) -> tuple[Subscription, ...]:
        receivers = self._receivers.get(kind)
        if receivers is None:
            receivers = self._receivers[kind] = tuple(
                subscription
                for subscription in self._subscriptions
                if not subscription.types or issubclass(kind, subscription.types)
            )
        return receivers

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def listening(self, kind: type) -> bool:
        """
        Whether anyone would receive an event of C{kind} (so that building
        one nobody reads can be skipped).
        """
        return bool(self._receivers_of(kind))

    def publish(self, event: object) -> None:
        for subscription in self._receivers_of(type(event)):
            if subscription.active:  # not cancelled by an earlier receiver
                try:
                    subscription.callback(event)
                except Exception:
                    log.failure("event subscriber failed on {event!r}", event=event)

    def stopService(self) -> None:
        super().stopService()
        subscriptions, self._subscriptions = self._subscriptions, []
        self._receivers.clear()
        for subscription in subscriptions:
            subscription.active = False
            if subscription.on_close is not None:
                try:
                    subscription.on_close()
                except Exception:
                    log.failure("closing an event subscriber failed")
