"""
GET /metrics: the Prometheus exposition parses with prometheus_client's own
parser, carries the newest llama-swap's host gauge names, and counts what
the proxy saw -- requests by status, durations, time to first byte, queue
waits, model loads, swaps, states, the queue, tokens and speed.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import succeed

from llamaswap.observe.host import GpuStat, HostSampler, NetIO, SysStat, parse_nvidia_smi
from tests.helpers import fake

CONFIG = f"""
models:
  a:
    cmd: {fake("a", "--startup-delay", "2")}
  b:
    cmd: {fake("b")}
    concurrencyLimit: 1
"""

NVIDIA = (
    b"0, NVIDIA GeForce RTX 4090, GPU-1111, 54, 60, 87, 40, 20000, 24564, 35, 301.5\n"
    b"1, NVIDIA GeForce RTX 3090, GPU-2222, 41, [N/A], 0, 0, 3, 24576, [N/A], 20.25\n"
    b"garbage line\n"
)


def scrape(server) -> dict:
    response, body = server.fetch("GET", "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, metric, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))))


def test_what_the_proxy_saw(memory):
    server = memory(CONFIG)
    assert server.chat("a")[0].code == 200  # waits two seconds for a to load
    assert server.chat("b", stream=True)[0].code == 200  # a is swapped out for b
    assert server.chat("nobody")[0].code == 404  # not a model: not counted by model
    slow = server.post("/v1/chat/completions?wait=1", json={"model": "b"})
    server.advance(0.1)
    assert server.chat("b")[0].code == 429  # b's only place is taken
    samples = scrape(server)
    assert value(samples, "llamaswap_model_state", model="b", state="ready") == 1
    assert value(samples, "llamaswap_model_state", model="a", state="ready") == 0
    server.run(slow)
    samples = scrape(server)
    assert value(samples, "llamaswap_requests_total", model="a", status="200") == 1
    assert value(samples, "llamaswap_requests_total", model="b", status="200") == 2
    assert value(samples, "llamaswap_requests_total", model="b", status="429") == 1
    assert not any(labels and dict(labels).get("model") == "nobody" for _, labels in samples)
    assert value(samples, "llamaswap_request_duration_seconds_count", model="b") == 3
    assert value(samples, "llamaswap_time_to_first_byte_seconds_count", model="a") == 1
    assert value(samples, "llamaswap_time_to_first_byte_seconds_sum", model="a") >= 2  # the load included
    assert value(samples, "llamaswap_queue_wait_seconds_sum", model="a") >= 2
    assert value(samples, "llamaswap_model_load_duration_seconds_count", model="a") == 1
    assert 2 <= value(samples, "llamaswap_model_load_duration_seconds_sum", model="a") < 3
    assert value(samples, "llamaswap_model_swaps_total", model="a") == 1
    assert value(samples, "llamaswap_queue_depth", model="a") == 0
    assert value(samples, "llamaswap_tokens_total", model="a", kind="output") == 10
    assert value(samples, "llamaswap_tokens_total", model="b", kind="cached") == 6  # the fake's cache_n, twice
    assert value(samples, "llamaswap_generation_tokens_per_second_count", model="b") == 2
    # the host, under upstream's names
    assert value(samples, "llamaswap_memory_total_bytes") > 0
    assert value(samples, "llamaswap_load_average", interval="1m") is not None
    assert value(samples, "llamaswap_cpu_util_percent", core="0") is not None


def test_the_queue_depth_while_a_model_loads(memory):
    server = memory(CONFIG)
    waiting = [server.post("/v1/chat/completions", json={"model": "a"}) for _ in range(3)]
    server.advance(0.5)
    assert value(scrape(server), "llamaswap_queue_depth", model="a") == 3
    for request in waiting:
        server.run(request)
    assert value(scrape(server), "llamaswap_queue_depth", model="a") == 0


def sample_at(now: float) -> SysStat:
    return SysStat(now, (12.5, 50.0), 32000, 12000, 20000, 8000, 100, 1.5, 1.0, 0.5, (NetIO("eth0", 1000, 2000),))


def test_gpus_from_nvidia_smi():
    stats = parse_nvidia_smi(NVIDIA, 7.0)
    assert [gpu.id for gpu in stats] == [0, 1]
    assert stats[0] == GpuStat(7.0, 0, "NVIDIA GeForce RTX 4090", "GPU-1111", 54, 60, 87.0, 40.0, 20000, 24564, 35.0, 301.5)
    assert (stats[1].vram_temp_c, stats[1].fan_speed_pct) == (0, 0.0)  # [N/A]


def test_host_gauges_and_the_hour_of_history():
    from twisted.internet.task import Clock

    from llamaswap.observe.events import EventBus
    from llamaswap.observe.prometheus import Telemetry

    clock = Clock()
    clock.advance(1000)
    host = HostSampler(clock, every=5, read_sys=sample_at, query_gpus=lambda: succeed(NVIDIA), wall_clock=clock.seconds)
    host.startService()
    for _ in range(2 * 720):
        clock.advance(5)
    sys_stats, gpu_stats = host.history()
    assert len(sys_stats) == 720 and len(gpu_stats) == 2 * 720  # an hour at one sample every 5 s
    assert host.history(after=clock.seconds() - 12)[0] == [sample_at(clock.seconds() - 10), sample_at(clock.seconds() - 5), sample_at(clock.seconds())]
    telemetry = Telemetry(EventBus(), clock.seconds, host, dict, dict)
    samples = {}
    for family in text_string_to_metric_families(telemetry.render().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value(samples, "llamaswap_cpu_util_percent", core="1") == 50.0
    assert value(samples, "llamaswap_memory_used_bytes") == 12000 * 1024 * 1024
    assert value(samples, "llamaswap_swap_used_bytes") == 100 * 1024 * 1024
    assert value(samples, "llamaswap_network_bytes_total", interface="eth0", direction="sent") == 2000
    assert value(samples, "llamaswap_gpu_power_draw_watts", id="0", name="NVIDIA GeForce RTX 4090", uuid="GPU-1111") == 301.5
    assert value(samples, "llamaswap_gpu_memory_total_bytes", id="1", name="NVIDIA GeForce RTX 3090", uuid="GPU-2222") == 24576 * 1024 * 1024
    host.stopService()
    assert clock.getDelayedCalls() == []


def test_a_host_without_statistics_keeps_serving():
    from twisted.internet.task import Clock

    def broken(now):
        raise PermissionError("no /proc here")

    clock = Clock()
    host = HostSampler(clock, every=5, read_sys=broken, query_gpus=lambda: None)
    host.startService()
    clock.advance(20)
    assert host.history() == ([], [])
    host.stopService()


def test_a_hung_or_failing_nvidia_smi_is_not_piled_up_and_is_reported_once():
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from llamaswap.observe.tool import ToolTimedOut

    clock = Clock()
    queries = []

    def query():
        queries.append(Deferred())
        return queries[-1]

    warnings = []
    observer = lambda event: "nvidia-smi" in str(event.get("log_format")) and warnings.append(event)  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        host = HostSampler(clock, every=5, read_sys=sample_at, query_gpus=query, wall_clock=clock.seconds)
        host.startService()
        for _ in range(3):
            clock.advance(5)
        assert len(queries) == 1  # one run at a time, however long it takes
        queries[0].errback(ToolTimedOut("no answer in 10 s"))
        clock.advance(5)
        assert len(queries) == 2
        queries[1].errback(ToolTimedOut("no answer in 10 s"))
        clock.advance(5)
        queries[2].callback(NVIDIA)
        assert len(host.history()[1]) == 2 and len(host.history()[0]) == 6
        assert [event["error"] for event in warnings] == ["no answer in 10 s"]  # said once
        clock.advance(5)
        host.stopService()  # the pending run is cancelled (which kills the tool), quietly
        assert queries[3].called and len(warnings) == 1
    finally:
        globalLogPublisher.removeObserver(observer)


def test_performance_api(memory):
    server = memory(CONFIG)
    server.advance(11)  # a few samples
    response, body = server.fetch("GET", "/api/performance")
    import json

    document = json.loads(body)
    assert response.code == 200 and document["enabled"] is True
    assert len(document["sys_stats"]) >= 2 and document["gpu_stats"] == []
    first = document["sys_stats"][0]
    assert set(first) == {
        "timestamp", "cpu_util_per_core", "mem_total_mb", "mem_used_mb", "mem_free_mb", "swap_total_mb",
        "swap_used_mb", "load_avg_1", "load_avg_5", "load_avg_15", "net_io",
    }
    later = json.loads(server.fetch("GET", "/api/performance?after=" + document["sys_stats"][-2]["timestamp"])[1])
    assert [stat["timestamp"] for stat in later["sys_stats"]] == [document["sys_stats"][-1]["timestamp"]]
    response, body = server.fetch("GET", "/api/performance?after=yesterday")
    assert response.code == 400 and b"invalid 'after' timestamp" in body
    off = memory(CONFIG + "performance: {disabled: true}\n", port=8081)
    response, body = off.fetch("GET", "/api/performance")
    assert (response.code, json.loads(body)) == (503, {"enabled": False})


def test_version_api(memory):
    import json

    from llamaswap import __version__

    document = json.loads(memory(CONFIG).fetch("GET", "/api/version")[1])
    assert document == {"version": __version__, "commit": "", "build_date": ""}


def test_hardware_snapshot(memory):
    import json

    server = memory(CONFIG)
    response, body = server.fetch("GET", "/api/hardware")
    document = json.loads(body)
    assert response.code == 200
    assert set(document) == {"operating_system", "architecture", "environment", "memory", "cpu", "accelerators"}
    assert document["memory"]["capacity_bytes"] > 0 and document["cpu"]["logical_thread_count"] >= 1
    assert document["operating_system"]["family"] == "linux"
    assert document["environment"]["kind"] in ("bare_metal", "container", "virtual_machine")


def test_hardware_parsing():
    from llamaswap.observe.hardware import accelerators, cpu, environment

    cpuinfo = (
        "processor: 0\nvendor_id: AuthenticAMD\nmodel name: AMD EPYC 7763\nphysical id: 0\ncore id: 0\nflags: fpu hypervisor\n\n"
        "processor: 1\nvendor_id: AuthenticAMD\nmodel name: AMD EPYC 7763\nphysical id: 0\ncore id: 1\nflags: fpu hypervisor\n\n"
        "processor: 2\nvendor_id: AuthenticAMD\nmodel name: AMD EPYC 7763\nphysical id: 0\ncore id: 0\nflags: fpu hypervisor\n"
    )
    files = {"/proc/cpuinfo": cpuinfo, "/sys/class/dmi/id/sys_vendor": "QEMU\n", "/proc/1/cgroup": "0::/init.scope\n"}
    described = cpu(files.get)
    assert (described["model"], described["vendor"], described["socket_count"], described["physical_core_count"]) == (
        "AMD EPYC 7763", "AuthenticAMD", 1, 2,
    )
    assert environment(lambda path: files.get(path, ""), lambda path: False) == {
        "kind": "virtual_machine", "name": "QEMU", "version": None,
    }
    assert environment(lambda path: "", lambda path: path == "/.dockerenv")["name"] == "docker"
    [gpu] = accelerators(b"0, NVIDIA GeForce RTX 4090, 24564, 550.54.14, 450.00\n[garbage]\n")
    assert gpu["memory"]["capacity_bytes"] == 24564 * 1024 * 1024 and gpu["driver"]["version"] == "550.54.14"
    assert gpu["power_limit_watts"] == 450.0
