#!/usr/bin/env python3
"""
Swap thrash: four clients alternating between two models whose servers take
a second to load, through `twistd llamaswap`, once per scheduler.

    python benchmarks/swaps.py            # fifo and swap-aware, about a minute
    python benchmarks/swaps.py --requests 4

Clients 0 and 2 start on model A, 1 and 3 on model B, 0.2 s apart; each
sends its requests one after the other, alternating models.  Loads are
counted from llamaswap's own /metrics (model load durations observed).
The fewest loads possible is one per switch of the whole group: 9 for 8
requests each.  Prints a table; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import TWISTD, free_port, wait_healthy  # noqa: E402

PYTHON = sys.executable


def config(scheduler: str, max_wait: float) -> str:
    models = "\n".join(
        f"""  {name}:
    cmd: {PYTHON} -m llamaswap.testing.upstream --port ${{PORT}} --silent --respond {name} --startup-delay 1"""
        for name in ("A", "B")
    )
    return f"""
healthCheckTimeout: 30
logLevel: warn
models:
{models}
routing:
  scheduler:
    use: {scheduler}
    settings:
      swap-aware: {{maxWait: {max_wait}}}
"""


def chat(url: str, model: str) -> float:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    started = time.perf_counter()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as answer:
        answer.read()
    return time.perf_counter() - started


def loads(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return int(sum(float(value) for value in re.findall(r"^llamaswap_model_load_duration_seconds_count\{[^}]*\} (\S+)", text, re.M)))


def run(scheduler: str, requests: int, max_wait: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        with open(path, "w") as handle:
            handle.write(config(scheduler, max_wait))
        proxy = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "llamaswap", "-c", path, "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(url + "/health", interval=0.02)
            latencies: list[float] = []
            failures: list[str] = []

            def client(index: int) -> None:
                time.sleep(0.2 * index)
                models = ("A", "B") if index % 2 == 0 else ("B", "A")
                for number in range(requests):
                    try:
                        latencies.append(chat(url, models[number % 2]))
                    except OSError as error:
                        failures.append(str(error))

            started = time.perf_counter()
            threads = [threading.Thread(target=client, args=(index,)) for index in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            total = time.perf_counter() - started
            return {
                "scheduler": scheduler,
                "loads": loads(url),
                "total_s": total,
                "worst_s": max(latencies) if latencies else float("nan"),
                "failed": len(failures),
            }
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per client (default 8)")
    parser.add_argument("--max-wait", type=float, default=30, help="swap-aware maxWait in seconds (default 30)")
    options = parser.parse_args()
    results = [run(scheduler, options.requests, options.max_wait) for scheduler in ("fifo", "swap-aware")]
    print(f"\n4 clients x {options.requests} requests, two models loading in 1 s, maxWait {options.max_wait:g} s")
    print(f"{'scheduler':<12} {'loads':>6} {'total s':>8} {'worst latency s':>16} {'failed':>7}")
    for result in results:
        print(
            f"{result['scheduler']:<12} {result['loads']:>6} {result['total_s']:>8.1f} "
            f"{result['worst_s']:>16.1f} {result['failed']:>7}"
        )
    fifo, aware = results
    print(f"swap-aware / fifo: loads {aware['loads'] / fifo['loads']:.2f}, total time {aware['total_s'] / fifo['total_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
