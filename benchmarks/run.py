#!/usr/bin/env python3
"""
llamaswap benchmarks: what the proxy adds, measured against the same
requests sent straight to the upstream, in the same run.

    python benchmarks/run.py            # everything, about two minutes
    python benchmarks/run.py --quick    # shorter runs, rougher figures

Runs the project's fake upstream and `twistd llamaswap` as real processes on
127.0.0.1.  With two or more CPUs the proxy is pinned to CPU 0 and the
upstream and load generator to CPU 1, so "on one core" means one core.
Throughput uses wrk when it is installed (apt-get install wrk), otherwise
the project's own load tool.  Prints a table; nothing here is a pass/fail
test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from contextlib import contextmanager

PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CPUS = os.cpu_count() or 1
PIN = CPUS >= 2 and shutil.which("taskset") is not None
WRK = shutil.which("wrk")
API_KEY = ""  # --api-key: the proxy requires it and every request sends it
CHAT_BODY = {"messages": [{"role": "user", "content": "Hello"}]}


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if PIN else argv


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(url: str, body: dict | None = None, timeout: float = 60) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as answer:
        return answer.read()


def wait_healthy(url: str, timeout: float = 30, interval: float = 0.001) -> float:
    """
    Poll url until it answers 200; return the seconds it took.
    """
    started = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{url} never became healthy")
        time.sleep(interval)


def fake_upstream(port: int, *flags: str, cpu: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        pinned(cpu, [PYTHON, "-m", "llamaswap.testing.upstream", "--port", str(port), "--silent", *flags]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def fake_cmd(*flags: str) -> str:
    # model servers started by the proxy run on the upstream's CPU
    command = pinned(1, [PYTHON, "-m", "llamaswap.testing.upstream", "--port", "${PORT}", "--silent", *flags])
    return " ".join(command)


class Proxy:
    def __init__(self, config: str, folder: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = os.path.join(folder, f"config-{self.port}.yaml")
        with open(path, "w") as handle:
            handle.write(textwrap.dedent(config))
        self.process = subprocess.Popen(
            pinned(0, [TWISTD, "-n", "--pidfile=", "llamaswap", "-c", path, "--listen", f"127.0.0.1:{self.port}"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_healthy(self.url + "/health", interval=0.02)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


# ---------------------------------------------------------------- load generators


def wrk(url: str, connections: int, seconds: float, latency: bool = False) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    body = json.dumps({"model": "m", **CHAT_BODY})
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n')
    if API_KEY:  # sent to the upstream too, so both sides carry the same bytes
        script.write(f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n')
    script.close()
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name]
    if latency:
        argv.append("--latency")
    output = subprocess.run(pinned(1, argv + [url]), capture_output=True, text=True).stdout
    os.unlink(script.name)

    def ms(text: str) -> float:
        match = re.match(r"([\d.]+)(us|ms|s)$", text)
        if match is None:
            raise RuntimeError(f"cannot read wrk's latency {text!r}:\n{output}")
        value, unit = match.groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    result = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "non_2xx": int((re.search(r"Non-2xx or 3xx responses: (\d+)", output) or [0, 0])[1]),
        "socket_errors": sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output)),
    }
    if latency:
        # the distribution's lines, not a percentage in the stats above them
        result["p50_ms"] = ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
        result["p99_ms"] = ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    return result


def load_tool(url: str, requests: int, concurrency: int, stream: bool = False, path: str = "/v1/chat/completions") -> dict:
    argv = [PYTHON, "-m", "llamaswap.bench", "--url", url, "--model", "m", "-n", str(requests),
            "-c", str(concurrency), "--json", "--quiet", "--path", path]
    if API_KEY:
        argv += ["--api-key", API_KEY]
    if stream:
        argv.append("--stream")
    output = subprocess.run(pinned(1, argv), capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the benchmarks


def row(rows, name, proxied, direct, unit, target="", better="lower"):
    if isinstance(proxied, (int, float)) and isinstance(direct, (int, float)) and direct:
        ratio = f"{proxied / direct:.2f}x"
    else:
        ratio = "-"
    rows.append((name, proxied, direct, ratio, unit, target))


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@contextmanager
def fake_behind_proxy(folder):
    """
    A fake upstream started by hand and a proxy in front of it (its model's
    cmd only sleeps): yields (proxy, the upstream's URL).
    """
    upstream_port = free_port()
    upstream = fake_upstream(upstream_port)
    direct_url = f"http://127.0.0.1:{upstream_port}"
    wait_healthy(direct_url + "/health")
    proxy = Proxy(
        f"""
        apiKeys: {json.dumps([API_KEY] if API_KEY else [])}
        models:
          m:
            cmd: sleep 1000000
            proxy: {direct_url}
            concurrencyLimit: 500
        """,
        folder,
    )
    try:
        http(proxy.url + "/v1/chat/completions", {"model": "m", **CHAT_BODY})
        yield proxy, direct_url
    finally:
        proxy.stop()
        upstream.terminate()
        upstream.wait()


def bench_requests(rows, folder, quick):
    with fake_behind_proxy(folder) as (proxy, direct_url):
        seconds = 3 if quick else 6
        # 1. latency at concurrency 1
        if WRK:
            direct = wrk(direct_url + "/v1/chat/completions", 1, seconds, latency=True)
            proxied = wrk(proxy.url + "/v1/chat/completions", 1, seconds, latency=True)
            direct_p50, direct_p99 = direct["p50_ms"], direct["p99_ms"]
            proxied_p50, proxied_p99 = proxied["p50_ms"], proxied["p99_ms"]
        else:
            count = 1000 if quick else 3000
            direct = load_tool(direct_url, count, 1)["latency_ms"]
            proxied = load_tool(proxy.url, count, 1)["latency_ms"]
            direct_p50, direct_p99, proxied_p50, proxied_p99 = direct["p50"], direct["p99"], proxied["p50"], proxied["p99"]
        row(rows, "chat latency p50, c=1", proxied_p50, direct_p50, "ms", f"added {proxied_p50 - direct_p50:.3f} ms (target <= 1)")
        row(rows, "chat latency p99, c=1", proxied_p99, direct_p99, "ms", f"added {proxied_p99 - direct_p99:.3f} ms")
        # 2. throughput
        for connections in (10, 50):
            if WRK:
                direct = wrk(direct_url + "/v1/chat/completions", connections, seconds)
                before = proxy.cpu_seconds()
                proxied = wrk(proxy.url + "/v1/chat/completions", connections, seconds)
                cpu_per_request = (proxy.cpu_seconds() - before) / max(1, proxied["requests"]) * 1e6
                failed = proxied["non_2xx"] + proxied["socket_errors"]
                row(rows, f"throughput c={connections}", proxied["rps"], direct["rps"], "req/s",
                    f"{failed} failed; {cpu_per_request:.0f} us CPU/request (target >= 1500 req/s)")
            else:
                count = 3000 if quick else 10000
                direct = load_tool(direct_url, count, connections)
                proxied = load_tool(proxy.url, count, connections)
                failed = sum(n for code, n in proxied["statuses"].items() if code != "200") + sum(proxied["errors"].values())
                row(rows, f"throughput c={connections}", proxied["requests_per_second"], direct["requests_per_second"],
                    "req/s", f"{failed} failed (load tool, not wrk)")
        # 3. streaming: time to the first chunk (many short streams whose
        # chunks are 20 ms apart, as generated tokens are), then the gaps
        # between the chunks of 500-chunk answers paced 2 ms apart
        path = "/v1/chat/completions?chunks=2&delay=0.02"
        count = 50 if quick else 200
        direct = load_tool(direct_url, count, 1, stream=True, path=path)
        proxied = load_tool(proxy.url, count, 1, stream=True, path=path)
        row(rows, "stream first chunk p50", proxied["first_byte_ms"]["p50"], direct["first_byte_ms"]["p50"], "ms",
            f"added {proxied['first_byte_ms']['p50'] - direct['first_byte_ms']['p50']:.3f} ms (target <= 1)")
        path = "/v1/chat/completions?chunks=500&delay=0.002"
        count = 5 if quick else 12
        direct = load_tool(direct_url, count, 1, stream=True, path=path)
        proxied = load_tool(proxy.url, count, 1, stream=True, path=path)
        row(rows, "stream chunk gap p50", proxied["chunk_gap_ms"]["p50"], direct["chunk_gap_ms"]["p50"], "ms", "upstream paces 2 ms")
        row(rows, "stream chunk gap p99", proxied["chunk_gap_ms"]["p99"], direct["chunk_gap_ms"]["p99"], "ms")
        row(rows, "stream reads per answer", proxied["chunks_per_response"], direct["chunks_per_response"], "reads",
            "~504 = every chunk delivered on its own")


class Original:
    """
    The Go llama-swap (built with ../shared/tools/build-original.sh) in
    front of the same upstream, pinned like our proxy.
    """

    def __init__(self, binary: str, direct_url: str, folder: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = os.path.join(folder, f"original-{self.port}.yaml")
        with open(path, "w") as handle:
            handle.write(
                "logLevel: info\nmodels:\n  m:\n    cmd: sleep 1000000\n"
                f"    proxy: {direct_url}\n    concurrencyLimit: 500\n"
            )
        self.process = subprocess.Popen(
            pinned(0, [binary, "-config", path, "-listen", f"127.0.0.1:{self.port}"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_healthy(self.url + "/health", interval=0.02)

    cpu_seconds = Proxy.cpu_seconds
    rss_mb = Proxy.rss_mb
    stop = Proxy.stop


def bench_versus_original(rows, folder, quick, binary):
    """
    llamaswap and the Go original side by side, in one run, over one
    upstream: latency at one connection, throughput at 10 and 50, CPU per
    request and memory after the run.  The three are measured in turn for
    each figure, so that a noisy neighbour hurts them alike.
    """
    if not WRK:
        raise SystemExit("--original needs wrk (apt-get install wrk)")
    seconds = 3 if quick else 8
    with fake_behind_proxy(folder) as (proxy, direct_url):
        original = Original(binary, direct_url, folder)
        try:
            http(original.url + "/v1/chat/completions", {"model": "m", **CHAT_BODY})
            servers = {"direct": (direct_url, None), "llamaswap": (proxy.url, proxy), "go": (original.url, original)}
            figures: dict = {name: {} for name in servers}
            for name, (url, _) in servers.items():
                wrk(url + "/v1/chat/completions", 10, 1)  # warm up
            for name, (url, _) in servers.items():
                result = wrk(url + "/v1/chat/completions", 1, seconds, latency=True)
                figures[name]["p50"], figures[name]["p99"] = result["p50_ms"], result["p99_ms"]
            for connections in (10, 50):
                for name, (url, process) in servers.items():
                    before = process.cpu_seconds() if process else 0
                    result = wrk(url + "/v1/chat/completions", connections, seconds)
                    figures[name][f"rps{connections}"] = result["rps"]
                    figures[name][f"failed{connections}"] = result["non_2xx"] + result["socket_errors"]
                    if process:
                        figures[name][f"cpu{connections}"] = (
                            (process.cpu_seconds() - before) / max(1, result["requests"]) * 1e6
                        )
            figures["llamaswap"]["rss"] = proxy.rss_mb()
            figures["go"]["rss"] = original.rss_mb()
        finally:
            original.stop()
    ours, go, direct = figures["llamaswap"], figures["go"], figures["direct"]
    added_ours, added_go = ours["p50"] - direct["p50"], go["p50"] - direct["p50"]
    rows.append(("added p50 latency, c=1", f"{added_ours:.3f}", f"{added_go:.3f}",
                 f"{added_ours / added_go:.2f}x" if added_go > 0 else "-", "ms",
                 f"direct p50 {direct['p50']:.3f} ms (target <= 1.5x)"))
    rows.append(("p99 latency, c=1", f"{ours['p99']:.3f}", f"{go['p99']:.3f}", f"{ours['p99'] / go['p99']:.2f}x",
                 "ms", f"direct {direct['p99']:.3f} ms (target <= 1.5x)"))
    for connections in (10, 50):
        rows.append((f"throughput c={connections}", f"{ours[f'rps{connections}']:.0f}", f"{go[f'rps{connections}']:.0f}",
                     f"{ours[f'rps{connections}'] / go[f'rps{connections}']:.2f}x", "req/s",
                     f"direct {direct[f'rps{connections}']:.0f}; CPU/request {ours[f'cpu{connections}']:.0f} vs "
                     f"{go[f'cpu{connections}']:.0f} us; failed {ours[f'failed{connections}']}/{go[f'failed{connections}']}"
                     " (target >= 0.8x)"))
    rows.append(("RSS after the run", f"{ours['rss']:.1f}", f"{go['rss']:.1f}", f"{ours['rss'] / go['rss']:.2f}x", "MB",
                 "(target <= 40 MB)"))


def bench_cold_start(rows, folder, quick, delay=0.5):
    # the upstream's own readiness: spawn it, poll /health every millisecond
    own = []
    for _ in range(2 if quick else 4):
        port = free_port()
        started = time.perf_counter()
        process = fake_upstream(port, "--startup-delay", str(delay))
        wait_healthy(f"http://127.0.0.1:{port}/health")
        own.append(time.perf_counter() - started)
        process.terminate()
        process.wait()
    proxy = Proxy(
        f"""
        startPort: {free_port()}
        models:
          m:
            cmd: {fake_cmd("--startup-delay", str(delay))}
        """,
        folder,
    )
    proxied = []
    try:
        for _ in range(2 if quick else 4):
            started = time.perf_counter()
            http(proxy.url + "/v1/chat/completions", {"model": "m", **CHAT_BODY})
            proxied.append(time.perf_counter() - started)
            http(proxy.url + "/unload")
    finally:
        proxy.stop()
    own_ms = statistics.median(own) * 1000
    proxied_ms = statistics.median(proxied) * 1000
    row(rows, f"cold start (ready after {delay:g} s)", proxied_ms, own_ms, "ms",
        f"added {proxied_ms - own_ms:.0f} ms (target <= 100; the original polls every 5 s)")


def bench_swap(rows, folder, quick):
    # the upstream's own stop + start
    own = []
    for _ in range(2 if quick else 4):
        port = free_port()
        started = time.perf_counter()
        process = fake_upstream(port)
        wait_healthy(f"http://127.0.0.1:{port}/health")
        process.send_signal(signal.SIGTERM)
        process.wait()
        own.append(time.perf_counter() - started)
    proxy = Proxy(
        f"""
        startPort: {free_port()}
        models:
          a:
            cmd: {fake_cmd()}
          b:
            cmd: {fake_cmd()}
        """,
        folder,
    )
    swaps = []
    try:
        http(proxy.url + "/v1/chat/completions", {"model": "a", **CHAT_BODY})
        for index in range(4 if quick else 10):
            model = "b" if index % 2 == 0 else "a"
            started = time.perf_counter()
            http(proxy.url + "/v1/chat/completions", {"model": model, **CHAT_BODY})
            swaps.append(time.perf_counter() - started)
    finally:
        proxy.stop()
    own_ms = statistics.median(own) * 1000
    swap_ms = statistics.median(swaps) * 1000
    row(rows, "swap between two models", swap_ms, own_ms, "ms", f"added {swap_ms - own_ms:.0f} ms over the upstream's own stop+start")


def bench_memory(rows, folder, quick):
    with fake_behind_proxy(folder) as (proxy, _):
        idle = proxy.rss_mb()
        streams = 100
        chunks, delay = (600, 0.01) if quick else (1500, 0.01)  # 6 s or 15 s per stream, 1 KB chunks
        clients = subprocess.Popen(
            pinned(1, [PYTHON, "-m", "llamaswap.bench", "--url", proxy.url, "--model", "m", "-n", str(streams),
                       "-c", str(streams), "--stream", "--json", "--quiet",
                       "--path", f"/v1/chat/completions?chunks={chunks}&delay={delay}&chunk_bytes=1024"]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        time.sleep(2.0)
        early = proxy.rss_mb()
        time.sleep((chunks * delay) * 0.6)
        late = proxy.rss_mb()
        output, _ = clients.communicate(timeout=600)
        result = json.loads(output.strip().splitlines()[-1])
        ok = result["statuses"].get("200", 0)
    rows.append(("RSS idle", f"{idle:.1f}", "-", "-", "MB", ""))
    rows.append((f"RSS, {streams} streams after 2 s", f"{early:.1f}", "-", "-", "MB",
                 f"{(early - idle) * 1024 / streams:.0f} KB per stream"))
    rows.append((f"RSS, {streams} streams {chunks * delay * 0.6 + 2:.0f} s in", f"{late:.1f}", "-", "-", "MB",
                 f"growth {late - early:+.1f} MB while answers grow ({ok}/{streams} streams ok)"))


def main() -> int:
    parser = argparse.ArgumentParser(description="llamaswap benchmarks")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--only", choices=["requests", "cold", "swap", "memory"], help="run one group")
    parser.add_argument("--original", metavar="BINARY",
                        help="compare with the Go llama-swap at BINARY (../shared/tools/build-original.sh builds it)")
    parser.add_argument("--api-key", default="", metavar="KEY",
                        help="run the request benchmarks with apiKeys: [KEY], every request sending it")
    options = parser.parse_args()
    global API_KEY
    API_KEY = options.api_key
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as folder:
        if options.original:
            print("running llamaswap versus the original ...", file=sys.stderr, flush=True)
            bench_versus_original(rows, folder, options.quick, options.original)
            _print_table(rows, ("benchmark", "llamaswap", "go", "ratio", "unit", "notes"))
            return 0
        groups = {
            "requests": bench_requests,
            "cold": bench_cold_start,
            "swap": bench_swap,
            "memory": bench_memory,
        }
        for name, bench in groups.items():
            if options.only in (None, name):
                print(f"running {name} ...", file=sys.stderr, flush=True)
                bench(rows, folder, options.quick)
    _print_table(rows, ("benchmark", "proxied", "direct", "ratio", "unit", "notes"))
    return 0


def _print_table(rows, header) -> None:
    print()
    print(f"machine: {platform.machine()}, {CPUS} CPUs ({_cpu_model()}), Python {platform.python_version()}, "
          f"{'proxy pinned to CPU 0' if PIN else 'no CPU pinning'}, load: {'wrk' if WRK else 'llamaswap.bench'}")
    widths = [max(len(fmt(r[i])) for r in [header, *rows]) for i in range(6)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(fmt(value).ljust(w) for value, w in zip(r, widths)))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
