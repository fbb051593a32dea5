"""
The long-lived answers: the live log tail (C{/logs/stream}) and the event
stream that feeds the web UI (C{/api/events}).

Both start with what already happened (log history, model states, recent
metrics), then follow the event bus.  A slow reader only loses its own
oldest messages and is told how many (see L{BoundedStream}); the bus never
waits for it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from llamaswap.observe.activity import ActivityLog
from llamaswap.observe.events import (
    ActivityRecorded,
    ConfigFileChanged,
    EventBus,
    LogData,
    ModelHealthChanged,
    ProcessStateChanged,
    ProfileChanged,
    QueueChanged,
)
from llamaswap.observe.inflight import InFlight, InFlightUpdate
from llamaswap.observe.logs import Logs
from llamaswap.observe.metrics import metrics_document
from llamaswap.protocols.sse import sse_event
from llamaswap.protocols.streaming import BoundedStream

LOG_SOURCES = {"": {"proxy", "upstream"}, "proxy": {"proxy"}, "upstream": {"upstream"}}


def _no_buffering(request: Request, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-accel-buffering", b"no")


def _follow(stream: BoundedStream, bus: EventBus, callback: Callable[[Any], None], *types: type) -> Deferred:
    subscription = bus.subscribe(callback, *types, on_close=stream.close)
    stream.on_close = subscription.cancel
    return stream.done


def stream_logs(request: Request, logs: Logs, bus: EventBus, name: str, history: bool) -> Deferred:
    """
    Tail the log called C{name} ("" for the combined one, C{proxy},
    C{upstream}, or a model id for that model's server), after its history
    unless C{history} is false.  The caller checked that the name is known.
    """
    _no_buffering(request, b"text/plain")
    stream = BoundedStream(
        request,
        dropped_notice=lambda count: f"[llamaswap: {count} log chunks dropped, the client was too slow]\n".encode(),
    )
    source = logs.monitor(name) or logs.for_model(name)
    if history:
        stream.send(source.history())
    request.write(b"")  # send the headers now, even before any log line

    if name in LOG_SOURCES:
        sources = LOG_SOURCES[name]

        def wanted(event: LogData) -> bool:
            # the combined log has the sources logToStdout sends to it
            return event.source in sources and bool(name or logs.in_combined(event.source))
    else:

        def wanted(event: LogData) -> bool:
            return event.model == name

    def on_log(event: LogData) -> None:
        if wanted(event):
            stream.send(event.data)

    return _follow(stream, bus, on_log, LogData)


def stream_events(
    request: Request,
    logs: Logs,
    bus: EventBus,
    activity: ActivityLog,
    statuses: Callable[[], list[dict[str, Any]]],
    inflight: InFlight | None = None,
    ui_config: Callable[[], dict] = dict,
    active_profile: Callable[[], str | None] = lambda: None,
) -> Deferred:
    """
    The UI's feed: every message is an SSE event named C{message} whose
    data is an envelope C{{"type": ..., "data": <JSON text>}}, as the
    original sends them: model states, log data, metrics, the in-flight
    requests, the UI settings and the active profile.
    """
    _no_buffering(request, b"text/event-stream")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"connection", b"keep-alive")
    stream = BoundedStream(
        request,
        dropped_notice=lambda count: f": {count} events dropped, the client was too slow\n\n".encode(),
    )

    def envelope(kind: str, payload: Any) -> None:
        stream.send(sse_event({"type": kind, "data": json.dumps(payload, ensure_ascii=False)}, "message"))

    def log_data(source: str, data: bytes) -> None:
        envelope("logData", {"data": data.decode("utf-8", "replace"), "source": source})

    def on_event(event: Any) -> None:
        if isinstance(event, (ProcessStateChanged, ConfigFileChanged, QueueChanged, ModelHealthChanged)):
            envelope("modelStatus", statuses())
        elif isinstance(event, LogData):
            log_data(event.source, event.data)
        elif isinstance(event, ActivityRecorded):
            envelope("activity", {"id": event.id})
            document = metrics_document(event.id, event.row)
            if document is not None:  # for the Nov-2025 UI
                envelope("metrics", [document])
        elif isinstance(event, InFlightUpdate):
            envelope("inflight", event.to_json())
        elif isinstance(event, ProfileChanged):
            envelope("profileChanged", {"active": event.active})
            envelope("modelStatus", statuses())

    log_data("proxy", logs.proxy_monitor.history())
    log_data("upstream", logs.upstream.history())
    envelope("modelStatus", statuses())
    envelope("metrics", activity.metrics())
    envelope("uiConfig", ui_config())
    envelope("profileChanged", {"active": active_profile()})
    if inflight is not None:
        envelope("inflight", inflight.snapshot().to_json())
    return _follow(
        stream,
        bus,
        on_event,
        ProcessStateChanged,
        ConfigFileChanged,
        LogData,
        ActivityRecorded,
        InFlightUpdate,
        ProfileChanged,
        QueueChanged,
        ModelHealthChanged,
    )
