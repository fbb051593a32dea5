"""
The one owner of a proxied request's path: admission by the scheduler, the
wait for the model's server (keeping a streaming client company with the
loading-state messages when asked to), the relay to the server, and the
release of the request's lease once the relay is over, however it ends.
Requests for a peer's model skip the local part and go straight to the
peer, with its API key.

Route functions parse the request and hand it here with where it goes;
everything between "which model" and "the answer has been relayed" is
decided in this module, and every failure on the way becomes the HTTP
status a client can act on.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Request

from llamaswap.config import PeerConfig
from llamaswap.http.answers import error_response
from llamaswap.http.client import ConnectionOptions, UpstreamClient
from llamaswap.http.jsonbody import InvalidBody, parse_request_body
from llamaswap.http.loading import LoadingStream
from llamaswap.http.proxy import AnswerTranslator, ReverseProxyResource
from llamaswap.models.manager import ModelManager
from llamaswap.models.process import ProcessShutdown, StartFailed
from llamaswap.observe.activity import ActivityLog, ActivityObserver
from llamaswap.observe.backlog import Backlog
from llamaswap.observe.inflight import Entry, InFlight, InFlightObserver
from llamaswap.observe.logs import ProxyLog
from llamaswap.routing.scheduler import Lease, ModelFailed, Refused, ShuttingDown, TooManyRequests

CANCELLED = "request cancelled"


class _Cancel:
    """
    What an operator's cancel of one request stops: its wait for the model,
    then its relay.
    """

    entry: Entry | None = None
    activity: ActivityObserver | None = None
    translate: AnswerTranslator | None = None  # the answer in another API's shape

    def __init__(self) -> None:
        self.waiting: Deferred | None = None
        self.resource: ReverseProxyResource | None = None
        self.requested = False

    def __call__(self) -> None:
        self.requested = True
        if self.resource is not None:
            self.resource.cancel(CANCELLED)
        elif self.waiting is not None:
            self.waiting.cancel()


class Gateway:
    def __init__(
        self,
        models: ModelManager,
        client: UpstreamClient,
        activity: ActivityLog,
        log: ProxyLog,
        clock,
        backlog: Backlog,
        inflight: InFlight | None = None,
    ):
        self.inflight = inflight
        self.models = models
        self.client = client
        self.activity = activity
        self.log = log
        self.clock = clock
        self.backlog = backlog

    def _track(self, request: Request, name: str, path: bytes | None, track: bool, body=None) -> _Cancel:
        """
        List the request among the in-flight ones until its answer is over,
        and have the activity log follow a metered one (a model-routed
        POST).
        """
        cancel = _Cancel()
        if not track:
            return cancel
        if request.method == b"POST":
            cancel.activity = self.activity.observe(request, name, body, path)
        if self.inflight is not None:
            shown = None if path is None else path.split(b"?", 1)[0].decode("utf-8", "replace")
            cancel.entry = self.inflight.add(request, name, cancel, path=shown)
        request.notifyFinish().addBoth(self._finished, cancel)
        return cancel

    def _finished(self, result, cancel: _Cancel) -> None:
        entry, activity = cancel.entry, cancel.activity
        # the entry and the cancel refer to each other: part them, so that
        # the request is freed when it ends, not by the garbage collector
        cancel.entry = cancel.resource = cancel.waiting = None
        if entry is not None:
            self.inflight.remove(entry)
        if activity is not None:
            activity.finished(result)

    def _observers(self, request: Request, name: str, cancel: _Cancel) -> tuple:
        observers = []
        if cancel.activity is not None:
            observers.append(cancel.activity)
        if cancel.entry is not None:
            observers.append(InFlightObserver(self.inflight, cancel.entry))
        return tuple(observers)

    def forward(
        self,
        request: Request,
        model_id: str,
        body: bytes | IBodyProducer | None,
        *,
        path: bytes | None = None,
        loading: bool = False,
        on_done: Callable[[], None] | None = None,
        upgrade: bytes | None = None,
        track: bool = True,
        translate: AnswerTranslator | None = None,
    ) -> bytes | Deferred:
        """
        Relay C{request} to C{model_id}'s server once it may be used.

        @param body: the request body to send (maybe rewritten), or a
            producer that streams it.
        @param path: the path and query to request from the server
            (default: the client's own).
        @param loading: keep the client company with loading-state messages
            if the model has to start first (a streaming chat request).
        @param on_done: called once the request is over, however it ends.
        @param upgrade: the protocol the client asks to switch to; the
            model stays in use until the switched connection closes.
        @param track: list it among the in-flight requests (an inference
            request, not a WebSocket or a model server's web page).
        @param translate: turns the answer into another API's shape.
        @return: an error body to send at once (429, 503), the resource
            that relays the answer when the model could be used at once, or
            a Deferred firing with that resource once it can (C{None} when
            the answer was already written or nobody is listening any more);
            cancelling it -- the client went away -- leaves the queue.
        """
        if on_done is not None:
            request.notifyFinish().addBoth(lambda _: on_done())
        request.metrics_model = model_id
        cancel = self._track(request, model_id, path, track and upgrade is None, body)
        cancel.translate = translate
        return self._serve(request, model_id, body, path, loading, upgrade, cancel)

    def _serve(
        self, request: Request, model_id: str, body, path, loading: bool, upgrade, cancel: _Cancel, fallback: bool = True
    ) -> bytes | Deferred | ReverseProxyResource:
        try:
            lease = self.models.use_now(model_id)
            if lease is not None:
                return self._relay(request, model_id, lease, body, path, False, upgrade, cancel)
            waiting = self.models.use(model_id)
        except ModelFailed as refusal:
            if fallback and self._fallback_of(model_id):
                return self._fall_back(request, model_id, body, path, loading, upgrade, cancel)
            return self._refused(request, refusal)
        except Refused as refusal:
            return self._refused(request, refusal)
        except ShuttingDown as error:
            return error_response(request, 503, str(error))
        process = self.models.processes[model_id]
        stream = None
        if loading and not self.models.is_ready(model_id):
            stream = LoadingStream(request, model_id, self.clock, lambda: process.loading_line)
        queued_at = self.clock.seconds()
        cancel.waiting = waiting

        def ready(lease: Lease):
            request.waited = self.clock.seconds() - queued_at
            if request.gone:
                lease.release()  # the client left just as its turn came
                return None
            if stream is not None:
                stream.done()
            return self._relay(request, model_id, lease, body, path, stream is not None, upgrade, cancel)

        def failed(failure: Failure):
            if failure.check(Refused):
                if stream is not None:
                    stream.failed(str(failure.value))
                    return None
                return self._refused(request, failure.value)
            if failure.check(CancelledError):
                if not cancel.requested:
                    return None  # the client went away while waiting
                if stream is not None:
                    stream.failed(CANCELLED)
                    return None
                return error_response(request, 503, CANCELLED)
            code, message = self._describe_start_failure(model_id, failure)
            if stream is not None:
                stream.failed(message)
                return None
            if fallback and failure.check(StartFailed) and not failure.check(ProcessShutdown):
                if self._fallback_of(model_id) and not request.gone:
                    return self._fall_back(request, model_id, body, path, loading, upgrade, cancel)
            return error_response(request, code, message)

        return waiting.addCallbacks(ready, failed)

    def _fallback_of(self, model_id: str) -> str | None:
        model = self.models.config.models.get(model_id)
        return model.fallback if model is not None else None

    def _fall_back(self, request: Request, model_id: str, body, path, loading: bool, upgrade, cancel: _Cancel):
        """
        Serve a request for a failed model with its C{fallback} (saying so
        in C{X-LlamaSwap-Fallback}).
        """
        fallback = self._fallback_of(model_id)
        self.log.warn(f"<{model_id}> cannot serve: the request goes to its fallback {fallback}")
        request.setHeader(b"x-llamaswap-fallback", fallback.encode())
        if isinstance(body, bytes):
            model = self.models.config.models[fallback]
            try:
                body = parse_request_body(body).rewrite(model=model.use_model_name or fallback)
            except InvalidBody:
                pass  # not JSON: sent as it is
        return self._serve(request, fallback, body, path, loading, upgrade, cancel, fallback=False)

    def forward_to_peer(
        self,
        request: Request,
        peer: PeerConfig,
        body: bytes | IBodyProducer | None,
        *,
        path: bytes | None = None,
        metrics_name: str | None = None,
        on_done: Callable[[], None] | None = None,
        upgrade: bytes | None = None,
        track: bool = True,
        translate: AnswerTranslator | None = None,
    ) -> ReverseProxyResource:
        """
        Relay C{request} to a peer, with its API key (as C{Authorization:
        Bearer} and C{x-api-key}) in place of the client's.
        """
        if on_done is not None:
            request.notifyFinish().addBoth(lambda _: on_done())
        name = request.metrics_model = metrics_name or peer.id
        cancel = self._track(request, name, path, track and upgrade is None, body)
        set_headers = ()
        if peer.api_key:
            key = peer.api_key.encode("latin-1")
            set_headers = ((b"Authorization", b"Bearer " + key), (b"x-api-key", key))
        resource = cancel.resource = ReverseProxyResource(
            self.client,
            f"peer {peer.id}",
            peer.proxy,
            path if path is not None else request.uri,
            body,
            log_error=self.log.error,
            observers=self._observers(request, name, cancel),
            head_timeout=peer.timeouts.response_header or None,
            options=ConnectionOptions.from_timeouts(peer.timeouts),
            set_headers=set_headers,
            upgrade=upgrade,
            translate=translate,
        )
        return resource

    def forward_unmanaged(self, request: Request, model_id: str, path: bytes, upgrade: bytes) -> bytes | Resource:
        """
        Relay a WebSocket of a model with C{compat.ignoreWebsockets}: only
        to a server that is already up, and without taking part in its
        life -- it does not start the model, count as in use, delay its
        ttl or hold back a swap (a swap may cut it).
        """
        if not self.models.is_ready(model_id):
            return error_response(
                request, 409, f"model {model_id} is not loaded; ignored websocket requests cannot start it"
            )
        model = self.models.config.models[model_id]
        return ReverseProxyResource(
            self.client,
            model_id,
            model.proxy,
            path,
            None,
            log_error=self.log.error,
            options=ConnectionOptions.from_timeouts(model.timeouts),
            upgrade=upgrade,
        )

    @staticmethod
    def _refused(request: Request, refusal: Refused) -> bytes:
        """
        The scheduler said no: 429 or 503 with when to try again, as JSON
        whatever the client accepts (clients retry on these by machine).
        """
        request.setHeader(b"retry-after", str(refusal.retry_after).encode())
        message = "Too many requests" if isinstance(refusal, TooManyRequests) else str(refusal)
        return error_response(request, refusal.status, message, refusal.code, json_only=True)

    def _describe_start_failure(self, model_id: str, failure: Failure) -> tuple[int, str]:
        if failure.check(ProcessShutdown, ShuttingDown):
            message = str(failure.value)
            if failure.check(ProcessShutdown):
                message = f"llamaswap is shutting down: {message}"
            return 503, message
        if failure.check(StartFailed):
            return 502, f"unable to start process: {failure.value}"
        message = f"error starting model {model_id}: {failure.value}"
        self.log.error(message)
        return 502, message

    def _relay(
        self, request: Request, model_id: str, lease: Lease, body, path, headers_sent: bool, upgrade, cancel: _Cancel
    ) -> ReverseProxyResource:
        model = lease.process.config
        resource = cancel.resource = ReverseProxyResource(
            self.client,
            model_id,
            model.proxy,
            path if path is not None else request.uri,
            body,
            log_error=self.log.error,
            observers=self._observers(request, model_id, cancel),
            on_done=lease.release,
            headers_sent=headers_sent,
            head_timeout=model.timeouts.response_header or None,
            options=ConnectionOptions.from_timeouts(model.timeouts),
            upgrade=upgrade,
            explain=self._explainer(lease.process),
            clock=self.clock,
            translate=cancel.translate,
        )
        return resource

    @staticmethod
    def _explainer(process) -> Callable[[], str | None]:
        """
        What to add to a relay's error when the server went away under it:
        the model and how its process ended (when that is known by then).
        """
        exits = process.exits

        def explain() -> str | None:
            if process.exits == exits:
                return None
            return f"model {process.id} {process.last_exit}"

        return explain
