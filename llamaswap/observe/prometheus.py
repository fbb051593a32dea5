"""
C{GET /metrics}: the Prometheus exposition, made by C{prometheus_client}.

The host gauges carry the newest llama-swap's names (C{llamaswap_cpu_util_percent},
memory, swap, load, network, GPUs), so its dashboards keep working.  On top
of them, what a proxy in front of model servers alone can tell: requests by
model and status, their duration and time to the first byte, how long
models take to load and requests wait for them, how often a model was
stopped to make room for another, each model's state, the queue, tokens
and generation speed.

Counting happens after each answer is on its way (the access-log backlog)
or on the event bus, never on a request's path, and in plain numbers:
C{prometheus_client} renders them (and the live gauges) when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from llamaswap.observe.events import ActivityRecorded, EventBus, ModelEvicted, ProcessStateChanged
from llamaswap.observe.host import HostSampler
from llamaswap.observe.metrics import listed

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MEGABYTE = 1024 * 1024
STATES = ("stopped", "starting", "ready", "stopping", "shutdown")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
SPEED_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000)


class _Counters:
    """
    Counters by label values, kept as plain numbers and turned into a
    family only when scraped: counting costs a dictionary update, where
    C{prometheus_client}'s own metrics take a lock per increment.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]):
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in sorted(self.values.items()):
            family.add_metric(labels, value)
        return family


class _Histograms:
    """
    Histograms by label values: a count per bucket and a sum, cumulated
    when scraped.
    """

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]):
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = buckets
        self.series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket (the last: +Inf), then the sum

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in sorted(self.series.items()):
            cumulated, buckets = 0, []
            for bound, count in zip((*(str(float(bound)) for bound in self.bounds), "+Inf"), series):
                cumulated += count
                buckets.append((bound, cumulated))
            family.add_metric(labels, buckets, sum_value=series[-1])
        return family


class Telemetry:
    """
    The Prometheus metrics of one running service.

    @param states: the current state of every model.
    @param waiting: requests waiting for each model.
    """

    def __init__(
        self,
        bus: EventBus,
        clock: Callable[[], float],
        host: HostSampler | None,
        states: Callable[[], dict[str, str]],
        waiting: Callable[[], dict[str, int]],
    ):
        self.clock = clock
        self.host = host
        self.requests = _Counters("llamaswap_requests", "Requests relayed, by model and HTTP status", ("model", "status"))
        self.duration = _Histograms(
            "llamaswap_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            ("model",),
            LATENCY_BUCKETS,
        )
        self.first_byte = _Histograms(
            "llamaswap_time_to_first_byte_seconds",
            "Time from a request's arrival to the start of its answer (model loading included)",
            ("model",),
            LATENCY_BUCKETS,
        )
        self.queue_wait = _Histograms(
            "llamaswap_queue_wait_seconds", "Time requests waited for their model to be usable", ("model",), LATENCY_BUCKETS
        )
        self.load = _Histograms(
            "llamaswap_model_load_duration_seconds",
            "Time from starting a model's server to its being ready",
            ("model",),
            LOAD_BUCKETS,
        )
        self.evictions = _Counters("llamaswap_model_swaps", "Times a model was stopped to make room for another", ("model",))
        self.tokens = _Counters("llamaswap_tokens", "Tokens processed, by model and kind", ("model", "kind"))
        self.speed = _Histograms(
            "llamaswap_generation_tokens_per_second", "Generation speed of each answer", ("model",), SPEED_BUCKETS
        )
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.registry.register(_LiveState(states, waiting))
        if host is not None:
            self.registry.register(_HostGauges(host))
        self._starting: dict[str, float] = {}
        bus.subscribe(self._on_event, ProcessStateChanged, ModelEvicted, ActivityRecorded)

    # ------------------------------------------------------------ feeding

    def request_done(self, model: str, status: int, duration: float, first_byte: float | None, waited: float | None):
        """
        One relayed request is over (called from the backlog).
        """
        labels = (model,)
        self.requests.inc((model, str(status)))
        self.duration.observe(labels, duration)
        if first_byte is not None:
            self.first_byte.observe(labels, first_byte)
        if waited is not None:
            self.queue_wait.observe(labels, waited)

    def _on_event(self, event) -> None:
        if isinstance(event, ProcessStateChanged):
            if event.new == "starting":
                self._starting[event.model] = self.clock()
            elif event.new == "ready" and event.model in self._starting:
                self.load.observe((event.model,), self.clock() - self._starting.pop(event.model))
            elif event.new in ("stopped", "shutdown"):
                self._starting.pop(event.model, None)
        elif isinstance(event, ModelEvicted):
            self.evictions.inc((event.model,))
        elif isinstance(event, ActivityRecorded):
            if not listed(event.row):
                return
            (_, model, _, _, _, cached, _, _, prompt, generated, _, speed, _, _, _) = event.row
            for kind, count in (("input", prompt), ("output", generated), ("cached", cached)):
                if count > 0:
                    self.tokens.inc((model, kind), count)
            if speed > 0:
                self.speed.observe((model,), speed)

    # ------------------------------------------------------------ reading

    def collect(self) -> Iterable:
        for metric in (
            self.requests,
            self.duration,
            self.first_byte,
            self.queue_wait,
            self.load,
            self.evictions,
            self.tokens,
            self.speed,
        ):
            yield metric.family()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState:
    """
    What is true at scrape time: each model's state (one series per state,
    1 for the current one) and the requests waiting for it.
    """

    def __init__(self, states: Callable[[], dict[str, str]], waiting: Callable[[], dict[str, int]]):
        self._states = states
        self._waiting = waiting

    def collect(self) -> Iterable:
        states = GaugeMetricFamily("llamaswap_model_state", "1 for each model's current state", labels=["model", "state"])
        for model, current in sorted(self._states().items()):
            for state in STATES:
                states.add_metric([model, state], 1 if state == current else 0)
        yield states
        queue = GaugeMetricFamily("llamaswap_queue_depth", "Requests waiting for their model", labels=["model"])
        for model, count in sorted(self._waiting().items()):
            queue.add_metric([model], count)
        yield queue


class _HostGauges:
    """
    The latest host sample, under the newest llama-swap's metric names.
    """

    def __init__(self, host: HostSampler):
        self._host = host

    def collect(self) -> Iterable:
        sample, gpus = self._host.latest()
        if sample is not None:
            yield from _system(sample)
        if gpus:
            yield from _gpus(gpus)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _system(sample) -> Iterable:
    cpu = GaugeMetricFamily("llamaswap_cpu_util_percent", "CPU utilization per core (0-100)", labels=["core"])
    for core, percent in enumerate(sample.cpu_util_per_core):
        cpu.add_metric([str(core)], percent)
    yield cpu
    yield _gauge("llamaswap_memory_total_bytes", "Total memory in bytes", sample.mem_total_mb * MEGABYTE)
    yield _gauge("llamaswap_memory_used_bytes", "Used memory in bytes", sample.mem_used_mb * MEGABYTE)
    yield _gauge("llamaswap_memory_free_bytes", "Free memory in bytes", sample.mem_free_mb * MEGABYTE)
    yield _gauge("llamaswap_swap_total_bytes", "Total swap in bytes", sample.swap_total_mb * MEGABYTE)
    yield _gauge("llamaswap_swap_used_bytes", "Used swap in bytes", sample.swap_used_mb * MEGABYTE)
    load = GaugeMetricFamily("llamaswap_load_average", "Load average", labels=["interval"])
    for interval, value in (("1m", sample.load_avg_1), ("5m", sample.load_avg_5), ("15m", sample.load_avg_15)):
        load.add_metric([interval], value)
    yield load
    if sample.net_io:
        network = CounterMetricFamily(
            "llamaswap_network_bytes", "Total network bytes transferred", labels=["interface", "direction"]
        )
        for interface in sample.net_io:
            network.add_metric([interface.name, "recv"], interface.bytes_recv)
            network.add_metric([interface.name, "sent"], interface.bytes_sent)
        yield network


GPU_GAUGES = (
    ("llamaswap_gpu_temperature_celsius", "GPU temperature in Celsius", lambda gpu: gpu.temp_c),
    ("llamaswap_gpu_vram_temperature_celsius", "GPU VRAM temperature in Celsius", lambda gpu: gpu.vram_temp_c),
    ("llamaswap_gpu_util_percent", "GPU utilization percent (0-100)", lambda gpu: gpu.gpu_util_pct),
    ("llamaswap_gpu_memory_util_percent", "GPU memory utilization percent (0-100)", lambda gpu: gpu.mem_util_pct),
    ("llamaswap_gpu_memory_used_bytes", "GPU memory used in bytes", lambda gpu: gpu.mem_used_mb * MEGABYTE),
    ("llamaswap_gpu_memory_total_bytes", "GPU memory total in bytes", lambda gpu: gpu.mem_total_mb * MEGABYTE),
    ("llamaswap_gpu_fan_speed_percent", "GPU fan speed percent (0-100)", lambda gpu: gpu.fan_speed_pct),
    ("llamaswap_gpu_power_draw_watts", "GPU power draw in watts", lambda gpu: gpu.power_draw_w),
)


def _gpus(gpus) -> Iterable:
    for name, documentation, value in GPU_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=["id", "name", "uuid"])
        for gpu in sorted(gpus, key=lambda gpu: gpu.id):
            family.add_metric([str(gpu.id), gpu.name, gpu.uuid], value(gpu))
        yield family
