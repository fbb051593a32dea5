"""
The requests being served right now, for the UI's in-flight list and for
an operator who wants one of them stopped (C{POST /api/inflight/<id>/cancel}).

Each relayed request is an L{Entry} from its arrival until its answer is
over.  Watchers learn of changes through L{InFlightUpdate} events on the
bus, in the newest llama-swap's shape: a C{snapshot} of all of them when
they start watching, then C{upsert} and C{remove} operations.  The count
of answer bytes changes with every chunk, so it is published at most four
times a second per request.  Credentials in headers are never shown.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from attrs import define, field, frozen

from llamaswap.observe.events import EventBus
from llamaswap.observe.timestamps import rfc3339
from llamaswap.protocols.client import ResponseHead

UPDATE_INTERVAL = 0.25
REDACTED = "[REDACTED]"
SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})


@frozen
class InFlightUpdate:
    """
    A change to the in-flight list: C{operation} is C{snapshot} (with
    C{requests}), C{upsert} (with C{request}) or C{remove} (with C{id}).
    """

    operation: str
    requests: tuple[dict, ...] = ()
    request: dict | None = None
    id: str = ""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"operation": self.operation}
        if self.operation == "snapshot":
            document["requests"] = list(self.requests)
        elif self.operation == "upsert":
            document["request"] = self.request
        else:
            document["id"] = self.id
        return document


def header_map(pairs) -> dict[str, str]:
    """
    One value per header (the first), credentials replaced.
    """
    headers: dict[str, str] = {}
    for name, value in pairs:
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        if name in headers:
            continue
        value = value.decode("latin-1") if isinstance(value, bytes) else value
        headers[name] = REDACTED if name.lower() in SENSITIVE else value
    return headers


def remote_address(request) -> str:
    """
    The client's address: the first hop of C{X-Forwarded-For} (or
    C{X-Real-IP}) when a reverse proxy is in front, else the peer's.
    """
    forwarded = request.getHeader(b"x-forwarded-for") or request.getHeader(b"x-real-ip")
    if forwarded:
        return forwarded.split(b",")[0].strip().decode("latin-1")
    return getattr(request.getClientAddress(), "host", "") or ""


@define
class Entry:
    """
    One in-flight request; what is only shown (headers, address) is worked
    out from the request when somebody looks.
    """

    id: str
    started: float
    model: str
    path: str | None  # None: the request's own
    request: Any
    cancel: Callable[[], None]
    metadata: dict[str, str] | None = None
    response_headers: list = field(factory=list)  # (name, value) pairs as the server sent them
    response_bytes: int = 0
    last_published: float = 0.0
    pending: Any = None  # the delayed call of a coming bytes update

    def to_json(self, now: float) -> dict[str, Any]:
        request = self.request
        document = {
            "id": self.id,
            "timestamp": rfc3339(self.started),
            "model": self.model,
            "req_path": self.path if self.path is not None else request.path.decode("utf-8", "replace"),
            "method": request.method.decode("latin-1"),
            "req_headers": header_map(
                (name, values[0]) for name, values in request.requestHeaders.getAllRawHeaders() if values
            ),
            "remote_ip": remote_address(request),
            "resp_headers": header_map(self.response_headers),
            "resp_bytes": self.response_bytes,
            "elapsed_ms": max(0, int((now - self.started) * 1000)),
        }
        if self.metadata:
            document["metadata"] = self.metadata
        return document


class InFlight:
    """
    The in-flight requests of one service.

    @param clock: schedules the throttled updates.
    @param wall_clock: the time shown.
    """

    def __init__(self, bus: EventBus, clock, wall_clock: Callable[[], float] = time.time):
        self._bus = bus
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[str, Entry] = {}
        self._next = 0

    def add(self, request, model: str, cancel: Callable[[], None], path: str | None = None, metadata=None) -> Entry:
        self._next += 1
        entry = Entry(str(self._next), self._wall_clock(), model, path, request, cancel, dict(metadata) if metadata else None)
        self._entries[entry.id] = entry
        self._upsert(entry)
        return entry

    def remove(self, entry: Entry) -> None:
        if self._entries.pop(entry.id, None) is None:
            return
        if entry.pending is not None and entry.pending.active():
            entry.pending.cancel()
        if self._bus.listening(InFlightUpdate):
            self._bus.publish(InFlightUpdate("remove", id=entry.id))

    def response_started(self, entry: Entry, head: ResponseHead) -> None:
        entry.response_headers = head.raw_headers
        self._upsert(entry)

    def response_bytes(self, entry: Entry, count: int) -> None:
        entry.response_bytes += count
        if entry.pending is not None or not self._bus.listening(InFlightUpdate) or entry.id not in self._entries:
            return  # an update is due anyway, nobody watches, or it is over
        wait = entry.last_published + UPDATE_INTERVAL - self._clock.seconds()
        if wait <= 0:
            self._upsert(entry)
        else:
            entry.pending = self._clock.callLater(wait, self._publish_pending, entry)

    def _publish_pending(self, entry: Entry) -> None:
        entry.pending = None
        if entry.id in self._entries:
            self._upsert(entry)

    def _upsert(self, entry: Entry) -> None:
        entry.last_published = self._clock.seconds()
        if self._bus.listening(InFlightUpdate):  # most of the time, no UI is open
            self._bus.publish(InFlightUpdate("upsert", request=entry.to_json(self._wall_clock())))

    def cancel(self, entry_id: str) -> bool:
        entry = self._entries.get(entry_id)
        if entry is None:
            return False
        entry.cancel()
        return True

    def snapshot(self) -> InFlightUpdate:
        now = self._wall_clock()
        entries = sorted(self._entries.values(), key=lambda entry: (entry.started, int(entry.id)))
        return InFlightUpdate("snapshot", requests=tuple(entry.to_json(now) for entry in entries))

    def __len__(self) -> int:
        return len(self._entries)


class InFlightObserver:
    """
    Feeds an entry from a relayed answer (a proxy L{ResponseObserver}).
    """

    def __init__(self, tracker: InFlight, entry: Entry):
        self._tracker = tracker
        self._entry = entry

    def response_started(self, head: ResponseHead) -> None:
        self._tracker.response_started(self._entry, head)

    def data_received(self, data: bytes) -> None:
        self._tracker.response_bytes(self._entry, len(data))

    def response_ended(self, complete: bool) -> None:
        pass
