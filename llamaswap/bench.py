"""
A load tool for OpenAI-compatible chat endpoints (llamaswap or any server):

    python -m llamaswap.bench --url http://127.0.0.1:8080 --model m -n 1000 -c 10 [--stream]

It sends N chat completion requests, P at a time, shows a live progress
line, and prints the status codes, latency percentiles (p50/p90/p99) and
requests per second; with --stream, also the time to first byte and the
gaps between chunks.  --json prints the figures as JSON instead (the
benchmarks use it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from llamaswap.http.bodies import BytesProducer


class IncompleteBody(Exception):
    """
    The response ended before its body was complete.
    """


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


class _Timed(Protocol):
    def __init__(self, started: float, clock):
        self.started = started
        self.clock = clock
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []
        self.size = 0
        self.chunks = 0
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        now = self.clock()
        if self.first is None:
            self.first = now
        else:
            self.gaps.append(now - self.last)
        self.last = now
        self.size += len(data)
        self.chunks += 1

    def connectionLost(self, reason) -> None:
        self.complete = reason.check(ResponseDone, PotentialDataLoss) is not None
        self.done.callback(None)


class LoadRun:
    def __init__(self, reactor, options: argparse.Namespace):
        self.reactor = reactor
        self.options = options
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = options.concurrency
        pool.retryAutomatically = False
        self.agent = Agent(reactor, pool=pool)
        self.url = (options.url.rstrip("/") + options.path).encode()
        body = json.loads(options.body) if options.body else {"messages": [{"role": "user", "content": "Hello"}]}
        body.setdefault("model", options.model)
        if options.stream:
            body["stream"] = True
        self.body = json.dumps(body).encode()
        self.headers = Headers({b"content-type": [b"application/json"]})
        if options.api_key:
            self.headers.addRawHeader(b"authorization", b"Bearer " + options.api_key.encode())
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()
        self.latencies: list[float] = []
        self.first_bytes: list[float] = []
        self.gaps: list[float] = []
        self.chunks: list[int] = []
        self.done = 0
        self.started = 0.0

    def clock(self) -> float:
        return time.perf_counter()

    @defer.inlineCallbacks
    def one(self):
        started = self.clock()
        try:
            response = yield self.agent.request(
                b"POST",
                self.url,
                self.headers,
                BytesProducer(self.body),
            )
            timed = _Timed(started, self.clock)
            response.deliverBody(timed)
            yield timed.done
            if not timed.complete:
                raise IncompleteBody()
            self.statuses[response.code] += 1
            self.latencies.append(self.clock() - started)
            if timed.first is not None:
                self.first_bytes.append(timed.first - started)
            self.gaps.extend(timed.gaps)
            self.chunks.append(timed.chunks)
        except Exception as error:  # counted and reported, never fatal
            self.errors[type(error).__name__] += 1
        self.done += 1

    def progress(self) -> None:
        if self.options.quiet:
            return
        elapsed = max(1e-9, self.clock() - self.started)
        errors = sum(self.errors.values()) + sum(n for code, n in self.statuses.items() if code >= 400)
        sys.stderr.write(
            f"\r  {self.done}/{self.options.requests} done, {errors} failed, {self.done / elapsed:.1f} req/s   "
        )
        sys.stderr.flush()

    @defer.inlineCallbacks
    def run(self):
        self.started = self.clock()
        ticker = task.LoopingCall(self.progress)
        ticker.start(0.25)
        work = (self.one() for _ in range(self.options.requests))
        cooperator = task.Cooperator()
        yield defer.DeferredList([cooperator.coiterate(work) for _ in range(self.options.concurrency)])
        elapsed = self.clock() - self.started
        ticker.stop()
        self.progress()
        if not self.options.quiet:
            sys.stderr.write("\n")
        return self.summary(elapsed)

    def summary(self, elapsed: float) -> dict:
        def ms(values, fraction):
            value = percentile(values, fraction)
            return None if value is None else round(value * 1000, 3)

        result = {
            "requests": self.options.requests,
            "concurrency": self.options.concurrency,
            "seconds": round(elapsed, 3),
            "requests_per_second": round(self.done / elapsed, 1) if elapsed else None,
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "latency_ms": {name: ms(self.latencies, f) for name, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))},
        }
        if self.options.stream:
            result["first_byte_ms"] = {name: ms(self.first_bytes, f) for name, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
            result["chunk_gap_ms"] = {name: ms(self.gaps, f) for name, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
            result["chunks_per_response"] = percentile([float(c) for c in self.chunks], 0.5)
        return result


def format_summary(result: dict) -> str:
    lines = [
        f"requests:   {result['requests']} with concurrency {result['concurrency']} in {result['seconds']} s",
        f"throughput: {result['requests_per_second']} requests/s",
        "statuses:   " + (", ".join(f"{code}: {n}" for code, n in result["statuses"].items()) or "none"),
    ]
    if result["errors"]:
        lines.append("errors:     " + ", ".join(f"{name}: {n}" for name, n in result["errors"].items()))
    latency = result["latency_ms"]
    lines.append(f"latency:    p50 {latency['p50']} ms, p90 {latency['p90']} ms, p99 {latency['p99']} ms, max {latency['max']} ms")
    if "first_byte_ms" in result:
        first = result["first_byte_ms"]
        gaps = result["chunk_gap_ms"]
        lines.append(f"first byte: p50 {first['p50']} ms, p90 {first['p90']} ms, p99 {first['p99']} ms")
        lines.append(f"chunk gaps: p50 {gaps['p50']} ms, p90 {gaps['p90']} ms, p99 {gaps['p99']} ms, max {gaps['max']} ms")
        lines.append(f"chunks:     {result['chunks_per_response']} per response (median)")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llamaswap.bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="base URL of the server")
    parser.add_argument("--model", required=True)
    parser.add_argument("-n", "--requests", type=int, default=1000)
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("--stream", action="store_true", help="ask for SSE streams and time their chunks")
    parser.add_argument("--path", default="/v1/chat/completions", help="path plus query, e.g. /v1/chat/completions?chunks=500")
    parser.add_argument("--body", default="", help="JSON request body (model is filled in)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--api-key", default="", help="sent as Authorization: Bearer <key>")
    options = parser.parse_args(argv)
    if options.requests < 1 or options.concurrency < 1:
        parser.error("-n and -c must be at least 1")
    options.concurrency = min(options.concurrency, options.requests)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    outcome: dict = {}

    def go(reactor):
        run = LoadRun(reactor, options)
        return run.run().addCallback(outcome.update)

    try:
        task.react(go)
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
    print(json.dumps(outcome) if options.json else format_summary(outcome))
    failed = sum(n for code, n in outcome.get("statuses", {}).items() if int(code) >= 400)
    return 1 if failed or outcome.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
