"""
The host's vital signs for the UI's Performance page, C{/api/performance}
and C{/metrics}: CPU per core, memory, swap, load, network, and the GPUs
when C{nvidia-smi} is there.

Samples are taken every C{performance.every} (psutil reads the kernel's
counters, a matter of microseconds; C{nvidia-smi} runs as a child process,
so the reactor never waits for it) and the last hour is kept.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections import deque
from typing import Any, Callable

from attrs import asdict, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from llamaswap.observe.timestamps import rfc3339
from llamaswap.observe.tool import run_tool

log = Logger()

HISTORY_SECONDS = 3600
NVIDIA_FIELDS = (
    "index",
    "name",
    "uuid",
    "temperature.gpu",
    "temperature.memory",
    "utilization.gpu",
    "utilization.memory",
    "memory.used",
    "memory.total",
    "fan.speed",
    "power.draw",
)


@frozen
class NetIO:
    name: str
    bytes_recv: int
    bytes_sent: int


@frozen
class SysStat:
    timestamp: float
    cpu_util_per_core: tuple[float, ...]
    mem_total_mb: int
    mem_used_mb: int
    mem_free_mb: int
    swap_total_mb: int
    swap_used_mb: int
    load_avg_1: float
    load_avg_5: float
    load_avg_15: float
    net_io: tuple[NetIO, ...]

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["timestamp"] = rfc3339(self.timestamp)
        return document


@frozen
class GpuStat:
    timestamp: float
    id: int
    name: str
    uuid: str
    temp_c: int
    vram_temp_c: int
    gpu_util_pct: float
    mem_util_pct: float
    mem_used_mb: int
    mem_total_mb: int
    fan_speed_pct: float
    power_draw_w: float

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["timestamp"] = rfc3339(self.timestamp)
        return document


def read_sys_stat(now: float) -> SysStat:
    import psutil

    megabyte = 1024 * 1024
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    load = psutil.getloadavg()
    network = psutil.net_io_counters(pernic=True)
    return SysStat(
        timestamp=now,
        cpu_util_per_core=tuple(psutil.cpu_percent(percpu=True)),
        mem_total_mb=memory.total // megabyte,
        mem_used_mb=memory.used // megabyte,
        mem_free_mb=memory.free // megabyte,
        swap_total_mb=swap.total // megabyte,
        swap_used_mb=swap.used // megabyte,
        load_avg_1=load[0],
        load_avg_5=load[1],
        load_avg_15=load[2],
        net_io=tuple(NetIO(name, counters.bytes_recv, counters.bytes_sent) for name, counters in sorted(network.items())),
    )


def _number(text: str, kind=float):
    try:
        return kind(float(text))
    except ValueError:
        return kind(0)  # "[N/A]", "[Not Supported]"


def parse_nvidia_smi(output: bytes, now: float) -> list[GpuStat]:
    """
    The GPUs in C{nvidia-smi --query-gpu=... --format=csv,noheader,nounits}
    output; lines that do not parse are skipped.
    """
    stats = []
    for line in output.decode("utf-8", "replace").splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(NVIDIA_FIELDS):
            continue
        try:
            index = int(fields[0])
        except ValueError:
            continue
        stats.append(
            GpuStat(
                timestamp=now,
                id=index,
                name=fields[1],
                uuid=fields[2],
                temp_c=_number(fields[3], int),
                vram_temp_c=_number(fields[4], int),
                gpu_util_pct=_number(fields[5]),
                mem_util_pct=_number(fields[6]),
                mem_used_mb=_number(fields[7], int),
                mem_total_mb=_number(fields[8], int),
                fan_speed_pct=_number(fields[9]),
                power_draw_w=_number(fields[10]),
            )
        )
    return stats


class HostSampler(Service):
    """
    Samples the host every C{every} seconds while running, keeping an hour.

    @param read_sys: takes a sample of the system (tests give their own).
    @param query_gpus: returns a Deferred of C{nvidia-smi}'s output, or
        C{None} when there is no such tool.
    """

    name = "host-sampler"

    def __init__(
        self,
        clock,
        every: float = 5.0,
        disabled: bool = False,
        read_sys: Callable[[float], SysStat] = read_sys_stat,
        query_gpus: Callable[[], Deferred | None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.clock = clock
        self.every = every
        self.disabled = disabled
        self._read_sys = read_sys
        self._query_gpus = query_gpus if query_gpus is not None else _nvidia_smi
        self._wall_clock = wall_clock
        self.sys_stats: deque[SysStat] = deque(maxlen=self._capacity())
        self.gpu_stats: deque[list[GpuStat]] = deque(maxlen=self._capacity())
        self._loop: LoopingCall | None = None
        self._gpu_query: Deferred | None = None
        self._warned = False
        self._gpu_warned = False

    def _capacity(self) -> int:
        return max(1, int(HISTORY_SECONDS / self.every))

    def startService(self) -> None:
        super().startService()
        if not self.disabled:
            self._loop = LoopingCall(self.sample)
            self._loop.clock = self.clock
            self._loop.start(self.every, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._gpu_query is not None:
            self._gpu_query.cancel()

    def reconfigure(self, every: float, disabled: bool) -> None:
        """
        Take a changed C{performance} setting (on a reload): the history
        starts again at the new pace.
        """
        if (every, disabled) == (self.every, self.disabled):
            return
        running = self.running
        if running:
            self.stopService()
        self.every, self.disabled = every, disabled
        self.sys_stats = deque(maxlen=self._capacity())
        self.gpu_stats = deque(maxlen=self._capacity())
        if running:
            self.startService()

    def sample(self) -> None:
        now = self._wall_clock()
        try:
            self.sys_stats.append(self._read_sys(now))
        except Exception as error:  # a sandbox hiding /proc, say: keep serving
            if not self._warned:
                self._warned = True
                log.warn("cannot read the host's statistics: {error}", error=error)
        if self._gpu_query is None:
            query = self._query_gpus()
            if query is not None:
                self._gpu_query = query
                query.addCallback(lambda output: self.gpu_stats.append(parse_nvidia_smi(output, now)))
                query.addErrback(self._gpu_failed)
                query.addBoth(self._gpu_done)

    def _gpu_failed(self, failure) -> None:
        # a GPU gone away, a driver hiccup, a hung nvidia-smi (killed):
        # said once, tried again at the next sample
        if not failure.check(CancelledError) and not self._gpu_warned:
            self._gpu_warned = True
            log.warn("nvidia-smi failed, GPU samples are missing: {error}", error=failure.getErrorMessage())

    def _gpu_done(self, result) -> None:
        self._gpu_query = None

    def history(self, after: float | None = None) -> tuple[list[SysStat], list[GpuStat]]:
        if after is None:
            return list(self.sys_stats), [stat for sample in self.gpu_stats for stat in sample]
        # compared to the microsecond, as the timestamps are shown
        limit = round(after * 1_000_000)
        sys_stats = [stat for stat in self.sys_stats if _microseconds(stat.timestamp) > limit]
        gpu_stats = [stat for sample in self.gpu_stats for stat in sample if _microseconds(stat.timestamp) > limit]
        return sys_stats, gpu_stats

    def latest(self) -> tuple[SysStat | None, list[GpuStat]]:
        return (self.sys_stats[-1] if self.sys_stats else None), (self.gpu_stats[-1] if self.gpu_stats else [])


def _microseconds(when: float) -> int:
    second = int(when)
    return second * 1_000_000 + int((when - second) * 1_000_000)


@functools.lru_cache(maxsize=1)
def _nvidia_smi_path() -> str | None:
    return shutil.which("nvidia-smi")  # looked up once, not every sample


def _nvidia_smi() -> Deferred | None:
    tool = _nvidia_smi_path()
    if tool is None:
        return None
    arguments = [f"--query-gpu={','.join(NVIDIA_FIELDS)}", "--format=csv,noheader,nounits"]
    return run_tool(tool, arguments)
