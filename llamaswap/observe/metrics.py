"""
Token metrics: what each successful inference response cost and how fast
it was, taken from the response's C{usage} and, when the server is
llama.cpp, its more precise C{timings}.

The newest llama-swap copies every response body into memory and parses it at the
end.  Here the response is inspected as it streams past: for an SSE stream
only the current line and the last event carrying usage or timings are
kept, so memory per stream stays constant however long the answer; a plain
JSON answer is kept up to L{MAX_JSON_BODY} bytes.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import frozen

from llamaswap.observe.timestamps import rfc3339_second
from llamaswap.observe.usage import SSEUsageScanner, Tally, usage_of
from llamaswap.protocols.client import ResponseHead

MAX_JSON_BODY = 8 * 1024 * 1024


@frozen
class TokenMetrics:
    model: str
    cache_tokens: int
    input_tokens: int
    output_tokens: int
    prompt_per_second: float
    tokens_per_second: float
    duration_ms: int
    draft_tokens: int = -1
    draft_acc_tokens: int = -1


def _number(value: Any, default: float = 0) -> float:
    kind = value.__class__
    if kind is int or kind is float:  # nearly always
        return value
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def metrics_from(document: Any, model: str, duration_ms: int) -> TokenMetrics | None:
    """
    Metrics from one JSON document (a whole response), or C{None} when it
    carries no usage, timings or metrics.
    """
    tally = Tally()
    tally.add(document)
    return metrics_of(tally, model, duration_ms)


def metrics_of(tally: Tally, model: str, duration_ms: int) -> TokenMetrics | None:
    """
    Metrics from what an answer said it cost (C{None} if it said nothing),
    by the newest llama-swap's rules: tokens from the usage; llama.cpp's
    C{timings}, when present, win for counts and speeds, and the duration
    is the longer of the measured one and theirs; vLLM's C{metrics} give
    speculative decoding counts and speeds from the time to the first token
    and the mean gap between tokens.  Unknown values are -1.
    """
    if not tally.found:
        return None
    input_tokens, output_tokens, cached = tally.input, tally.output, tally.cached
    prompt_per_second = tokens_per_second = -1.0
    draft_tokens = draft_accepted = -1
    timings = tally.timings
    if timings is not None:
        input_tokens = int(_number(timings.get("prompt_n")))
        output_tokens = int(_number(timings.get("predicted_n")))
        prompt_per_second = float(_number(timings.get("prompt_per_second")))
        tokens_per_second = float(_number(timings.get("predicted_per_second")))
        duration_ms = max(duration_ms, int(_number(timings.get("prompt_ms")) + _number(timings.get("predicted_ms"))))
        if "cache_n" in timings:
            cached = int(_number(timings.get("cache_n"), -1))
        if "draft_n" in timings and "draft_n_accepted" in timings:
            draft_tokens = int(_number(timings.get("draft_n")))
            draft_accepted = int(_number(timings.get("draft_n_accepted")))
    measured = tally.metrics or {}
    speculative = measured.get("speculative_decoding")
    if isinstance(speculative, dict) and "num_draft_tokens" in speculative and "num_accepted_draft_tokens" in speculative:
        draft_tokens = int(_number(speculative["num_draft_tokens"]))
        draft_accepted = int(_number(speculative["num_accepted_draft_tokens"]))
    first_token_ms = _number(measured.get("time_to_first_token_ms"))
    if first_token_ms > 0:
        prompt_per_second = (input_tokens - max(cached, 0)) / (first_token_ms / 1000)
    gap_ms = _number(measured.get("mean_itl_ms"))
    if gap_ms > 0:
        tokens_per_second = 1000 / gap_ms
    return TokenMetrics(
        model=model,
        cache_tokens=cached,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        prompt_per_second=prompt_per_second,
        tokens_per_second=tokens_per_second,
        duration_ms=duration_ms,
        draft_tokens=draft_tokens,
        draft_acc_tokens=draft_accepted,
    )


def listed(row: tuple) -> bool:
    """
    Whether C{GET /api/metrics} lists an activity row (values in the
    activity database's column order): it succeeded and said what it cost.
    """
    return row[4] == 200 and not row[13] and bool(row[8] or row[9])


def metrics_document(activity_id: int, row: tuple) -> dict[str, Any] | None:
    """
    An activity row in the Nov-2025 shape of C{GET /api/metrics}, or
    C{None} for one it does not list.
    """
    if not listed(row):
        return None
    (created, model, _, _, _, cached, drafted, accepted, prompt, generated, prompt_speed, speed, duration, _, _) = row
    return {
        "id": activity_id,
        "timestamp": rfc3339_second(created),
        "model": model,
        "cache_tokens": cached,
        "input_tokens": prompt,
        "output_tokens": generated,
        "prompt_per_second": prompt_speed,
        "tokens_per_second": speed,
        "duration_ms": duration,
        "draft_tokens": drafted,
        "draft_acc_tokens": accepted,
    }


class MetricsObserver:
    """
    Watches one proxied inference response and works out, once it is over,
    what it cost (L{result}).
    """

    def __init__(
        self,
        model: str,
        clock: Callable[[], float],
        warn: Callable[[str], None] | None = None,
        path: str = "",
    ):
        self._model = model
        self._clock = clock
        self._warn = warn
        self._path = path
        self._started = clock()
        self._ok = False
        self._scanner: SSEUsageScanner | None = None
        self._body: list[bytes] | None = None
        self._size = 0
        self._first_generated: float | None = None
        self._last_generated: float | None = None

    def response_started(self, head: ResponseHead) -> None:
        self._ok = head.code == 200
        if not self._ok:
            return
        if head.header(b"content-encoding"):
            self._ok = False  # compressed: nothing we can read cheaply
            return
        if b"text/event-stream" in (head.header(b"content-type") or b"").lower():
            self._scanner = SSEUsageScanner()
        else:
            self._body = []

    def data_received(self, data: bytes) -> None:
        if not self._ok:
            return
        if self._scanner is not None:
            if self._scanner.feed(data):
                now = self._clock()
                if self._first_generated is None:
                    self._first_generated = now
                self._last_generated = now
        elif self._body is not None:
            self._size += len(data)
            if self._size > MAX_JSON_BODY:
                self._body = None
            else:
                self._body.append(data)

    def _derived(self, duration_ms: int) -> TokenMetrics:
        """
        Metrics for a stream without usage (llama-cpp-python's server, for
        one): each event with generated text is one generated token, and
        the speed is measured between the first and the last of them; the
        prompt side is unknown (-1).
        """
        generated = self._scanner.generated_events
        span = (self._last_generated or 0) - (self._first_generated or 0)
        return TokenMetrics(
            model=self._model,
            cache_tokens=-1,
            input_tokens=-1,
            output_tokens=generated,
            prompt_per_second=-1.0,
            tokens_per_second=round((generated - 1) / span, 2) if generated > 1 and span > 0 else -1.0,
            duration_ms=duration_ms,
        )

    def result(self, ended: float) -> TokenMetrics | None:
        """
        The metrics of the answer that ended at C{ended} (C{None} when it
        failed or said nothing about its cost).
        """
        if not self._ok:
            return None
        duration_ms = round((ended - self._started) * 1000)
        tally = Tally()
        if self._scanner is not None:
            self._scanner.close()
            tally = self._scanner.tally
        elif self._body:
            tally.add(usage_of(b"".join(self._body)))
        metrics = metrics_of(tally, self._model, duration_ms)
        if metrics is None and self._scanner is not None and self._scanner.generated_events:
            metrics = self._derived(duration_ms)
        if metrics is None:
            if self._warn is not None:
                self._warn(f"metrics skipped for {self._model}: no usage or timings in the response {self._path}")
        return metrics
