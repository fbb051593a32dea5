"""
The event bus, bounded streaming to slow clients, and /api/events.
"""

from __future__ import annotations

import json

from twisted.internet.protocol import Protocol
from twisted.web.test.requesthelper import DummyRequest

from llamaswap.observe.events import (
    EventBus,
    LogData,
    ModelPreloaded,
    ProcessStateChanged,
)
from llamaswap.protocols.streaming import BoundedStream
from tests.helpers import fake


def test_bus_delivers_by_type_in_order():
    bus = EventBus()
    everything, states = [], []
    bus.subscribe(everything.append)
    bus.subscribe(states.append, ProcessStateChanged)
    events = [ProcessStateChanged("m", "stopped", "starting"), LogData("proxy", b"x"), ModelPreloaded("m", True)]
    for event in events:
        bus.publish(event)
    assert everything == events
    assert states == events[:1]


def test_failing_subscriber_does_not_stop_the_others():
    bus = EventBus()
    seen = []

    def broken(event):
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    bus.publish(LogData("proxy", b"x"))
    assert seen == [LogData("proxy", b"x")]


def test_cancel_and_close():
    bus = EventBus()
    seen, closed = [], []
    subscription = bus.subscribe(seen.append, on_close=lambda: closed.append(1))
    other = bus.subscribe(seen.append, on_close=lambda: closed.append(2))
    subscription.cancel()
    subscription.cancel()
    bus.publish(LogData("proxy", b"x"))
    assert len(seen) == 1
    bus.startService()
    bus.stopService()
    assert closed == [2]
    assert bus.subscriber_count == 0
    assert not other.active


class SlowRequest(DummyRequest):
    """
    A request whose client stopped reading: the transport paused us.
    """

    def __init__(self):
        super().__init__([b""])
        self.producer = None
        self.gone = False

    def lose_connection(self):
        self.gone = True
        for notification in self._finishedDeferreds:
            notification.errback(Exception("connection lost"))

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def test_slow_subscriber_loses_oldest_messages_and_is_told():
    request = SlowRequest()
    stream = BoundedStream(request, max_bytes=100, dropped_notice=lambda n: f"[{n} dropped]\n".encode())
    stream.send(b"first\n")
    assert request.written == [b"first\n"]
    stream.pauseProducing()
    for index in range(50):
        stream.send(f"message {index:02d}\n".encode())  # 11 bytes each
    assert stream.buffered_bytes <= 100
    assert stream.dropped == 41
    stream.resumeProducing()
    assert request.written[1] == b"[41 dropped]\n"
    assert request.written[2:] == [f"message {index:02d}\n".encode() for index in range(41, 50)]
    assert stream.buffered_bytes == 0


def test_stream_closes_on_client_disconnect():
    request = SlowRequest()
    closed = []
    stream = BoundedStream(request, on_close=lambda: closed.append(True))
    request.lose_connection()
    assert stream.closed and closed == [True]
    assert stream.done.called
    stream.send(b"ignored")
    assert request.written == []


class Events(Protocol):
    """
    Parses an SSE stream of llamaswap envelopes.
    """

    def __init__(self):
        self.buffer = b""
        self.messages: list[dict] = []
        self.ended = False

    def dataReceived(self, data):
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    envelope = json.loads(line[5:])
                    envelope["data"] = json.loads(envelope["data"])
                    self.messages.append(envelope)

    def connectionLost(self, reason):
        self.ended = True

    def of_type(self, kind):
        return [message["data"] for message in self.messages if message["type"] == kind]


CONFIG = f"""
models:
  m:
    cmd: {fake("m")}
    name: "Model M"
    description: "the only one"
  hidden:
    cmd: {fake("hidden")}
    unlisted: true
"""


def connect(server):
    response = server.run(server.get("/api/events"))
    events = Events()
    response.deliverBody(events)
    server.advance(0.01)
    return response, events


def test_model_status_carries_aliases_capabilities_and_peers(memory):
    server = memory(
        f"""
        models:
          vision:
            cmd: {fake("vision")}
            aliases: [eyes]
            capabilities: {{in: [text, image], out: [text], tools: true, context: 8192}}
          plain:
            cmd: {fake("plain")}
        peers:
          far:
            proxy: http://127.0.0.1:9
            models: [remote-1, org/remote-2]
        """
    )
    response, events = connect(server)
    assert events.of_type("modelStatus")[0] == [
        {"id": "plain", "name": "", "description": "", "state": "stopped", "unlisted": False, "queued": 0, "peerID": ""},
        {
            "id": "vision", "name": "", "description": "", "state": "stopped", "unlisted": False, "queued": 0, "peerID": "",
            "aliases": ["eyes"],
            "capabilities": {"vision": True, "function_calling": True},
            "context_length": 8192,
        },
        {"id": "far/remote-1", "name": "", "description": "", "state": "", "unlisted": False, "peerID": "far"},
        {"id": "far/org/remote-2", "name": "", "description": "", "state": "", "unlisted": False, "peerID": "far"},
    ]


def test_events_stream_initial_state_and_load_unload_cycle(memory):
    server = memory(CONFIG)
    server.chat("m")  # one metric exists before we connect
    server.fetch("GET", "/unload")
    server.advance(0.01)
    response, events = connect(server)
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream"]
    assert response.headers.getRawHeaders("cache-control") == ["no-cache"]
    assert response.headers.getRawHeaders("x-accel-buffering") == ["no"]
    kinds = [message["type"] for message in events.messages]
    assert kinds == ["logData", "logData", "modelStatus", "metrics", "uiConfig", "profileChanged", "inflight"]
    assert events.messages[4]["data"] == {"activity": {"session_id": ["X-Session-ID", "X-Litellm-Session-Id"]}}
    assert events.messages[5]["data"] == {"active": None}
    assert events.messages[6]["data"] == {"operation": "snapshot", "requests": []}
    assert [message["data"]["source"] for message in events.messages[:2]] == ["proxy", "upstream"]
    assert "fake upstream m" in events.messages[1]["data"]["data"]
    assert events.messages[2]["data"] == [
        {"id": "hidden", "name": "", "description": "", "state": "stopped", "unlisted": True, "queued": 0, "peerID": ""},
        {"id": "m", "name": "Model M", "description": "the only one", "state": "stopped", "unlisted": False, "queued": 0, "peerID": ""},
    ]
    assert len(events.messages[3]["data"]) == 1 and events.messages[3]["data"][0]["model"] == "m"
    events.messages.clear()
    server.chat("m")
    server.fetch("GET", "/unload")
    server.advance(0.01)
    statuses = [next(entry for entry in status if entry["id"] == "m") for status in events.of_type("modelStatus")]
    states = [status["state"] for status in statuses]
    assert [state for index, state in enumerate(states) if not index or states[index - 1] != state] == [
        "stopped",
        "starting",
        "ready",
        "stopping",
        "stopped",
    ]
    assert statuses[0]["queued"] == 1 and statuses[-1]["queued"] == 0  # queued while it loaded
    metrics = events.of_type("metrics")
    assert len(metrics) == 1 and metrics[0][0]["id"] == 2  # ids are the activity log's
    assert events.of_type("activity") == [{"id": 2}]  # the newest llama-swap's announcement
    sources = {entry["source"] for entry in events.of_type("logData")}
    assert sources == {"proxy", "upstream"}
    inflight = events.of_type("inflight")  # the chat request came and went
    assert [update["operation"] for update in inflight] == ["upsert", "upsert", "remove"]
    assert inflight[0]["request"]["model"] == "m" and inflight[0]["request"]["req_path"] == "/v1/chat/completions"
    subscribers = server.service.bus.subscriber_count
    events.transport.stopProducing()
    server.advance(0.01)
    assert server.service.bus.subscriber_count == subscribers - 1


def test_events_stream_ends_on_shutdown(memory):
    server = memory(CONFIG)
    _, events = connect(server)
    server.stop()
    server.advance(0.01)
    assert events.ended
    assert events.messages


def test_the_bus_says_whether_anyone_listens_for_a_kind():
    from llamaswap.observe.events import EventBus, LogData, ProfileChanged

    bus = EventBus()
    assert not bus.listening(LogData)
    subscription = bus.subscribe(lambda event: None, LogData)
    assert bus.listening(LogData) and not bus.listening(ProfileChanged)
    everything = bus.subscribe(lambda event: None)
    assert bus.listening(ProfileChanged)
    subscription.cancel()
    everything.cancel()
    assert not bus.listening(LogData)
