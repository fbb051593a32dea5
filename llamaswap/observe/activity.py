"""
The activity log: one entry per metered request (the model-routed POST
endpoints), whatever its outcome -- the model, path, status, content type,
tokens and speeds, duration and, for failures, why -- kept in the activity
database (L{llamaswap.observe.store}) and listed by
C{GET /api/metrics/activity}; with captures on, the request and answer too.

An L{ActivityObserver} follows one request from the moment the gateway
takes it (so a request that never reached a server, refused or cancelled
while waiting, is recorded as well) to the end of its answer.  The entry is
written after the answer is on its way, in batches, never on the path of a
streamed token; a new entry is announced on the bus as L{ActivityRecorded}.
"""

from __future__ import annotations

import io
import json
import time
from http import HTTPStatus
from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.server import Request

from llamaswap.observe import store
from llamaswap.observe.backlog import Backlog
from llamaswap.observe.captures import (
    REQUEST_BODY,
    REQUEST_HEADERS,
    RESPONSE_BODY,
    RESPONSE_HEADERS,
    Captures,
    capture_document,
    compress,
    kept_for,
    redacted_headers,
    response_header_map,
)
from llamaswap.observe.events import EventBus
from llamaswap.observe.metrics import MetricsObserver, MetricsStore, TokenMetrics
from llamaswap.observe.timestamps import parse_rfc3339
from llamaswap.protocols.client import ResponseHead

# A failed answer's body is read for its error message up to this size.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_MESSAGE_LIMIT = 500
# Captures up to this size are compressed at once; larger ones on a thread.
COMPRESS_INLINE_LIMIT = 64 * 1024
# Status of a request whose client left before any answer (nginx's code).
CLIENT_GONE = 499


@frozen
class ActivityRecorded:
    """
    A new activity entry was written (C{/api/events} announces its id).
    """

    id: int
    model: str


def _ids(args: dict[bytes, list[bytes]], name: str) -> int:
    raw = args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be >= 1")
    return value


def _moment(args: dict[bytes, list[bytes]], name: str) -> float | None:
    raw = args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()
    if not raw:
        return None
    moment = parse_rfc3339(raw)
    if moment is None:
        raise ValueError(f"invalid '{name}' timestamp, use RFC3339 format")
    return moment


def parse_query(args: dict[bytes, list[bytes]]) -> store.ActivityQuery:
    """
    The listing a query string asks for (C{model} repeated, C{start},
    C{end}, C{min_id}, C{max_id}, C{limit} 1-999, C{page}, C{sort},
    C{order}); C{ValueError} with the message for the client otherwise.
    """

    def text(name: str) -> str:
        return args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()

    models = tuple(
        dict.fromkeys(
            model for model in (raw.decode("utf-8", "replace").strip() for raw in args.get(b"model", ())) if model
        )
    )
    start, end = _moment(args, "start"), _moment(args, "end")
    if start is not None and end is not None and start > end:
        raise ValueError("start must be before end")
    min_id, max_id = _ids(args, "min_id"), _ids(args, "max_id")
    if min_id and max_id and min_id > max_id:
        raise ValueError("min_id must be <= max_id")
    limit = 25
    if text("limit"):
        try:
            limit = int(text("limit"))
        except ValueError:
            raise ValueError("invalid limit") from None
        if not 0 < limit < 1000:
            raise ValueError("limit must be between 1 and 999")
    page = 1
    if text("page"):
        try:
            page = int(text("page"))
        except ValueError:
            page = 0
        if page < 1:
            raise ValueError("page must be >= 1")
    sort = text("sort") or "id"
    if sort not in store.SORT_COLUMNS:
        raise ValueError("invalid sort column")
    order = (text("order") or "desc").lower()
    if order not in ("asc", "desc"):
        raise ValueError("order must be asc or desc")
    return store.ActivityQuery(
        models=models,
        start=start,
        end=end,
        min_id=min_id,
        max_id=max_id,
        limit=limit,
        page=page,
        sort=sort,
        order=order,
    )


def error_message_of(body: bytes) -> str:
    """
    The human-readable message of a JSON error answer (OpenAI's, llama.cpp's
    and a few others' shapes), or "".
    """
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    error = document.get("error")
    for candidate in (
        error.get("message") if isinstance(error, dict) else None,
        error,
        document.get("message"),
        document.get("detail"),
    ):
        if isinstance(candidate, str) and candidate.strip():
            message = candidate.strip()
            if len(message) > ERROR_MESSAGE_LIMIT:
                message = message[:ERROR_MESSAGE_LIMIT] + "..."
            return message
    return ""


class ActivityLog:
    """
    The activity entries and captures of one running llamaswap.

    @param database: where entries are written and read.
    @param metrics: the older token-metrics list (C{/api/metrics}), fed
        from the same observation.
    @param keep: how many rows an in-memory database keeps.
    """

    def __init__(
        self,
        database: store.Database,
        captures: Captures,
        metrics: MetricsStore,
        bus: EventBus | None,
        clock,
        backlog: Backlog,
        keep: int = 1000,
        warn: Callable[[str], None] | None = None,
        debug: Callable[[str], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.database = database
        self.captures = captures
        self.metrics = metrics
        self.bus = bus
        self.clock = clock
        self.backlog = backlog
        self.keep = keep
        self.warn = warn
        self.debug = debug
        self.wall_clock = wall_clock
        self._queue: list[tuple[tuple, bytes | None, str]] = []
        self._writing = False
        self._waiters: list[Deferred] = []
        self._closed = False

    def observe(self, request: Request, model: str, body: Any, endpoint: bytes | None = None) -> ActivityObserver:
        """
        Follow C{request} (for C{model}; C{body} is what is sent on) until
        its answer is over, then record it.
        """
        return ActivityObserver(self, request, model, body, endpoint)

    # ------------------------------------------------------------ writing

    def record(self, row: tuple, capture: bytes | None, model: str) -> None:
        """
        Write one entry (values in L{store.COLUMNS} order) and keep its
        capture (an uncompressed capture document), if any.
        """
        threads = self.clock if IReactorThreads.providedBy(self.clock) else None
        if capture is None or len(capture) <= COMPRESS_INLINE_LIMIT or threads is None:
            self._enqueue(row, None if capture is None else compress(capture), model, capture)
            return
        compressing = deferToThreadPool(threads, threads.getThreadPool(), compress, capture)
        compressing.addCallbacks(
            lambda compressed: self._enqueue(row, compressed, model, capture),
            lambda failure: self._enqueue(row, None, model, capture),
        )

    def _enqueue(self, row: tuple, compressed: bytes | None, model: str, capture: bytes | None) -> None:
        if capture is not None:
            self.captures.release(len(capture))
        if self._closed:
            return
        self._queue.append((row, compressed, model))
        if not self._writing:
            self._write()

    def _write(self) -> None:
        batch, self._queue = self._queue, []
        self._writing = True
        keep = self.keep if self.database.in_memory else 0
        writing = self.database.run(store.insert, [row for row, _, _ in batch], keep)
        writing.addCallbacks(self._written, self._not_written, (batch,))
        writing.addBoth(self._next)

    def _written(self, ids: list[int], batch) -> None:
        for activity_id, (_, compressed, model) in zip(ids, batch):
            if compressed is not None:
                self.captures.add(activity_id, compressed)
            if self.bus is not None:
                self.bus.publish(ActivityRecorded(activity_id, model))

    def _not_written(self, failure: Failure) -> None:
        if self.warn is not None:
            self.warn(f"activity not recorded: {failure.getErrorMessage()}")

    def _next(self, _) -> None:
        self._writing = False
        if self._queue:
            self._write()
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _settled(self) -> Deferred:
        """
        Fires once every entry queued so far is written, so a listing
        includes what finished before it was asked for.
        """
        if not (self._writing or self._queue):
            return succeed(None)
        waiter: Deferred = Deferred()
        self._waiters.append(waiter)
        return waiter

    # ------------------------------------------------------------ reading

    def page(self, query: store.ActivityQuery) -> Deferred:
        """
        A page of entries (the newest llama-swap's shape), each marked with
        whether its capture is still kept.
        """

        def mark(page: dict) -> dict:
            for entry in page["data"]:
                entry["has_capture"] = self.captures.has(entry["id"])
            return page

        reading = self._settled().addCallback(lambda _: self.database.run(store.list_page, query))
        return reading.addCallback(mark)

    def stats(self, model: str = "") -> Deferred:
        return self._settled().addCallback(lambda _: self.database.run(store.stats, model))

    def capture(self, activity_id: int) -> bytes | None:
        return self.captures.get(activity_id)

    # ------------------------------------------------------------ life

    def reconfigure(self, keep: int, capture_megabytes: int) -> None:
        self.keep = keep
        self.captures.resize(capture_megabytes)

    def close(self) -> Deferred:
        """
        Write what is queued (entries recorded from now on are dropped),
        then close the database.
        """
        self._closed = True
        return self._settled().addBoth(lambda _: self.database.close())


class ActivityObserver:
    """
    Watches one metered request -- its answer as the proxy relays it, and
    how the request ended -- and records it in the activity log.
    """

    def __init__(self, log: ActivityLog, request: Request, model: str, body: Any, endpoint: bytes | None):
        self._log = log
        self._request = request
        self._model = model
        self._path = request.path.decode("utf-8", "replace")
        self._tokens = MetricsObserver(log.metrics, model, log.clock.seconds, warn=log.debug, path=self._path)
        self._started = log.clock.seconds()
        self._head: ResponseHead | None = None
        self._complete = False
        self._client_gone = False
        self._error_body: list[bytes] | None = None
        self._error_size = 0
        self._kept = 0
        self._reserved = 0
        self._request_headers: dict[str, str] | None = None
        self._request_body: bytes | None = None
        self._response_body: list[bytes] | None = None
        captures = log.captures
        if captures.enabled:
            endpoint_path = (endpoint or request.path).split(b"?", 1)[0].decode("utf-8", "replace")
            self._kept = kept_for(endpoint_path)
            if self._kept & REQUEST_HEADERS:
                self._request_headers = redacted_headers(request.requestHeaders)
            if self._kept & REQUEST_BODY:
                data = body if isinstance(body, bytes) else None
                if data is None and isinstance(request.content, io.BytesIO):
                    data = request.content.getvalue()
                if data is not None and self._reserve(len(data)):
                    self._request_body = data
        request.notifyFinish().addBoth(self._finished)

    def _reserve(self, size: int) -> bool:
        if self._log.captures.reserve(size):
            self._reserved += size
            return True
        return False

    # the proxy's observer interface

    def response_started(self, head: ResponseHead) -> None:
        self._head = head
        self._tokens.response_started(head)
        if head.code != 200:
            self._error_body = []
        elif self._kept & RESPONSE_BODY:
            self._response_body = []

    def data_received(self, data: bytes) -> None:
        self._tokens.data_received(data)
        if self._error_body is not None:
            if self._error_size < ERROR_BODY_LIMIT:
                self._error_body.append(data[: ERROR_BODY_LIMIT - self._error_size])
                self._error_size += len(data)
        elif self._response_body is not None:
            if self._reserve(len(data)):
                self._response_body.append(data)
            else:
                self._response_body = None  # too large to keep
                self._kept = 0

    def response_ended(self, complete: bool) -> None:
        self._complete = complete
        self._ended = self._log.clock.seconds()

    # the end

    def _finished(self, result) -> None:
        if isinstance(result, Failure):
            self._client_gone = True
        self._finished_at = self._log.clock.seconds()
        self._log.backlog.later(self._record)

    def _outcome(self) -> tuple[int, str, str]:
        """
        The status, content type and error message to record.
        """
        request, head = self._request, self._head
        told = getattr(request, "error_message", None)
        if head is not None:
            status = head.code
            content_type = (head.header(b"content-type") or b"").decode("latin-1")
        elif request.startedWriting or request.finished:
            status = request.code
            content_type = (request.responseHeaders.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
        else:
            return CLIENT_GONE, "", told or "the client went away before the answer started"
        if told:
            return status, content_type, told
        if status != 200:
            message = error_message_of(b"".join(self._error_body or ()))
            if not message:
                try:
                    message = f"{status} {HTTPStatus(status).phrase}"
                except ValueError:
                    message = f"HTTP {status}"
            return status, content_type, message
        if head is not None and not self._complete:
            if self._client_gone:
                return status, content_type, "the client went away before the answer was complete"
            return status, content_type, "the answer was cut short"
        return status, content_type, ""

    def _record(self) -> None:
        status, content_type, error = self._outcome()
        metrics: TokenMetrics | None = None
        if status == 200 and self._head is not None and self._complete and not error:
            metrics = self._tokens.record(self._ended)
        duration_ms = round((self._finished_at - self._started) * 1000)
        if metrics is not None:
            duration_ms = max(duration_ms, metrics.duration_ms)
            tokens = (
                metrics.cache_tokens,
                metrics.draft_tokens,
                metrics.draft_acc_tokens,
                metrics.input_tokens,
                metrics.output_tokens,
                metrics.prompt_per_second,
                metrics.tokens_per_second,
            )
        else:
            tokens = (0, 0, 0, 0, 0, 0.0, 0.0)
        row = (
            int(self._log.wall_clock()),
            self._model,
            self._path,
            content_type,
            status,
            *tokens,
            duration_ms,
            error,
            "",
        )
        self._log.record(row, self._capture(status), self._model)

    def _capture(self, status: int) -> bytes | None:
        kept = self._kept
        if not kept:
            self._log.captures.release(self._reserved)
            return None
        if status != 200:
            kept &= ~RESPONSE_BODY  # why it failed is in the entry's error message
        request = self._request
        response_headers = None
        if kept & RESPONSE_HEADERS:
            if self._head is not None:
                response_headers = response_header_map(self._head.raw_headers)
            else:
                response_headers = response_header_map(redacted_headers(request.responseHeaders).items())
        document = capture_document(
            self._path,
            self._request_headers,
            self._request_body if kept & REQUEST_BODY else None,
            response_headers,
            b"".join(self._response_body) if kept & RESPONSE_BODY and self._response_body is not None else None,
        )
        # from here the reservation covers the document until it is compressed
        self._log.captures.release(self._reserved)
        return document if self._log.captures.reserve(len(document)) else None
