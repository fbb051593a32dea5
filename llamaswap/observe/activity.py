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
from collections import deque
from http import HTTPStatus
from typing import Any, Callable

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
    Capture,
    Captures,
    header_pairs,
    kept_for,
)
from llamaswap.observe.events import ActivityRecorded, EventBus
from llamaswap.observe.metrics import MetricsObserver, TokenMetrics, listed, metrics_document
from llamaswap.observe.timestamps import parse_rfc3339
from llamaswap.protocols.client import ResponseHead

# A failed answer's body is read for its error message up to this size.
ERROR_BODY_LIMIT = 64 * 1024
ERROR_MESSAGE_LIMIT = 500
# Status of a request whose client left before any answer (nginx's code).
CLIENT_GONE = 499


def _arg(args: dict[bytes, list[bytes]], name: str) -> str:
    return args.get(name.encode(), [b""])[0].decode("utf-8", "replace").strip()


def _ids(args: dict[bytes, list[bytes]], name: str) -> int:
    raw = _arg(args, name)
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
    raw = _arg(args, name)
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
    if _arg(args, "limit"):
        try:
            limit = int(_arg(args, "limit"))
        except ValueError:
            raise ValueError("invalid limit") from None
        if not 0 < limit < 1000:
            raise ValueError("limit must be between 1 and 999")
    page = 1
    if _arg(args, "page"):
        try:
            page = int(_arg(args, "page"))
        except ValueError:
            page = 0
        if page < 1:
            raise ValueError("page must be >= 1")
    sort = _arg(args, "sort") or "id"
    if sort not in store.SORT_COLUMNS:
        raise ValueError("invalid sort column")
    order = (_arg(args, "order") or "desc").lower()
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
    @param keep: how many rows an in-memory database keeps.
    """

    def __init__(
        self,
        database: store.Database,
        captures: Captures,
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
        self.bus = bus
        self.clock = clock
        self.backlog = backlog
        self.keep = keep
        self.warn = warn
        self.debug = debug
        self.wall_clock = wall_clock
        self._next_id = database.last_id + 1
        # Rows not yet written.  An in-memory database is written only when
        # somebody reads it (the newest rows up to keep wait here, so
        # serving a request costs an append); a file, in batches on its
        # thread as they come.
        self._pending: deque[tuple] = deque(maxlen=keep if database.in_memory else None)
        # The newest entries /api/metrics lists (in its Nov-2025 shape).
        self._metrics: deque[tuple[int, tuple]] = deque(maxlen=keep)
        self._threads = clock if IReactorThreads.providedBy(clock) else None  # for compressing large captures
        self._writing = False
        self._write_soon = False
        self._waiters: list[Deferred] = []
        self._closed = False

    def observe(self, request: Request, model: str, body: Any, endpoint: bytes | None = None) -> ActivityObserver:
        """
        Follow C{request} (for C{model}; C{body} is what is sent on) until
        its answer is over (the caller says when: L{ActivityObserver.finished}),
        then record it.
        """
        return ActivityObserver(self, request, model, body, endpoint)

    # ------------------------------------------------------------ writing

    def record(self, row: tuple, capture: Capture | None, model: str) -> int:
        """
        Add one entry (values in L{store.COLUMNS} order) and keep its
        capture, if any; return its id.
        """
        if self._closed:
            return -1
        activity_id = self._next_id
        self._next_id += 1
        self._pending.append((activity_id, *row))
        if capture is not None:
            self._keep_capture(activity_id, capture)
        if listed(row):
            self._metrics.append((activity_id, row))
        if self.bus is not None and self.bus.listening(ActivityRecorded):
            self.bus.publish(ActivityRecorded(activity_id, model, row))
        if not (self.database.in_memory or self._writing or self._write_soon):
            self._write_soon = True
            self.clock.callLater(0, self._write)
        return activity_id

    def _keep_capture(self, activity_id: int, capture: Capture) -> None:
        reserved = capture.size
        threads = self._threads
        if threads is None or not capture.worth_compressing():
            self.captures.release(reserved)
            self.captures.add(activity_id, capture)
            return

        def compressed(smaller: Capture) -> None:
            self.captures.release(reserved)
            self.captures.add(activity_id, smaller)

        def failed(failure: Failure) -> None:
            self.captures.release(reserved)
            if self.warn is not None:
                self.warn(f"capture {activity_id} not kept: {failure.getErrorMessage()}")

        compressing = deferToThreadPool(threads, threads.getThreadPool(), capture.compress)
        compressing.addCallbacks(compressed, failed)

    def _write(self) -> None:
        self._write_soon = False
        if self._writing or not self._pending:
            return
        rows = list(self._pending)
        self._pending.clear()
        self._writing = True
        keep = self.keep if self.database.in_memory else 0
        writing = self.database.run(store.insert, rows, keep)
        writing.addErrback(self._not_written, len(rows))
        writing.addBoth(self._written)

    def _not_written(self, failure: Failure, count: int) -> None:
        if self.warn is not None:
            self.warn(f"{count} activity entries not recorded: {failure.getErrorMessage()}")

    def _written(self, _) -> None:
        self._writing = False
        if self._pending:
            self._write()
            return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _settled(self) -> Deferred:
        """
        Fires once every entry recorded so far is written, so a listing
        includes what finished before it was asked for.
        """
        if self._pending and not self._writing:
            self._write()
        if not (self._writing or self._pending):
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

    def metrics(self) -> list[dict]:
        """
        The newest successful entries that said what they cost, oldest
        first, as C{GET /api/metrics} has always listed them.
        """
        return [metrics_document(activity_id, row) for activity_id, row in self._metrics]

    def capture(self, activity_id: int) -> bytes | None:
        return self.captures.get(activity_id)

    # ------------------------------------------------------------ life

    def reconfigure(self, keep: int, capture_megabytes: int) -> None:
        if keep != self.keep:
            self._metrics = deque(self._metrics, maxlen=keep)
            if self.database.in_memory:
                self._pending = deque(self._pending, maxlen=keep)
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
        self._tokens = MetricsObserver(model, log.clock.seconds, warn=log.debug, path=self._path)
        self._started = log.clock.seconds()
        self._head: ResponseHead | None = None
        self._complete = False
        self._client_gone = False
        self._ended = self._finished_at = self._started
        self._error_body: list[bytes] | None = None
        self._error_size = 0
        self._kept = 0
        self._reserved = 0
        self._request_headers: tuple | None = None
        self._request_body: bytes | None = None
        self._response_body: list[bytes] | None = None
        captures = log.captures
        if captures.enabled:
            endpoint_path = (endpoint or request.path).split(b"?", 1)[0].decode("utf-8", "replace")
            self._kept = kept_for(endpoint_path)
            if self._kept & REQUEST_HEADERS:
                self._request_headers = header_pairs(request.requestHeaders)
            if self._kept & REQUEST_BODY:
                data = body if isinstance(body, bytes) else None
                if data is None and isinstance(request.content, io.BytesIO):
                    data = request.content.getvalue()
                if data is not None and self._reserve(len(data)):
                    self._request_body = data

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
        if self._response_body is not None:
            if self._reserve(len(data)):
                self._response_body.append(data)
            else:
                self._response_body = None  # too large to keep
                self._kept = 0
        elif self._error_body is not None and self._error_size < ERROR_BODY_LIMIT:
            self._error_body.append(data[: ERROR_BODY_LIMIT - self._error_size])
            self._error_size += len(data)

    def response_ended(self, complete: bool) -> None:
        self._complete = complete
        self._ended = self._log.clock.seconds()

    # the end

    def finished(self, result) -> None:
        """
        The request is over (C{result} is a failure if the client went
        away first).
        """
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
            if status == 200 and self._complete and not told:
                return status, content_type, ""  # the usual case
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
        duration_ms = round((self._finished_at - self._started) * 1000)
        metrics: TokenMetrics | None = None
        if not error and status == 200 and self._head is not None:
            metrics = self._tokens.result(self._ended)
        if metrics is not None:
            row = (
                int(self._log.wall_clock()),
                self._model,
                self._path,
                content_type,
                status,
                metrics.cache_tokens,
                metrics.draft_tokens,
                metrics.draft_acc_tokens,
                metrics.input_tokens,
                metrics.output_tokens,
                metrics.prompt_per_second,
                metrics.tokens_per_second,
                max(duration_ms, metrics.duration_ms),
                "",
                "",
            )
        else:
            row = (int(self._log.wall_clock()), self._model, self._path, content_type, status,
                   0, 0, 0, 0, 0, 0.0, 0.0, duration_ms, error, "")  # fmt: skip
        self._log.record(row, self._capture(status), self._model)

    def _capture(self, status: int) -> Capture | None:
        """
        The capture to keep (its reservation now covers the whole of it),
        or C{None}.
        """
        kept = self._kept
        captures = self._log.captures
        captures.release(self._reserved)
        if not kept:
            return None
        if status != 200:
            kept &= ~RESPONSE_BODY  # why it failed is in the entry's error message
        response_headers = None
        if kept & RESPONSE_HEADERS:
            if self._head is not None:
                response_headers = tuple(self._head.raw_headers)
            else:
                response_headers = header_pairs(self._request.responseHeaders)
        response_body = None
        if kept & RESPONSE_BODY and self._response_body is not None:
            response_body = b"".join(self._response_body)
        capture = Capture(
            self._path,
            self._request_headers,
            self._request_body if kept & REQUEST_BODY else None,
            response_headers,
            response_body,
        )
        return capture if captures.reserve(capture.size) else None
