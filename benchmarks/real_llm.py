#!/usr/bin/env python3
"""
Real-server figures: llama.cpp's Python server with SmolLM2 135M, through
llamaswap and directly.

    python benchmarks/real_llm.py

Needs the environment of scripts/prepare-real-llm.sh.  Reports the cold
start (request to first byte, server spawned on demand) through the proxy
against the server's own start-to-ready time, and generation speed (tokens
per second of a streamed answer, measured by the client) through the proxy
against the same requests sent directly.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import PYTHON, Proxy, free_port, pinned, wait_healthy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.environ.get("LLAMASWAP_GGUF", os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
# the model server always runs on CPU 1 (the proxy, when pinned, on CPU 0)
SERVER = pinned(1, [PYTHON, "-m", "llama_cpp.server", "--model", GGUF, "--host", "127.0.0.1", "--n_threads", "1",
          "--interrupt_requests", "false", "--n_ctx", "2048"])
JSON = {"Content-Type": "application/json"}  # llama-cpp-python insists on it
PROMPT = {"messages": [{"role": "user", "content": "Tell a short story about a lighthouse."}], "max_tokens": 96,
          "temperature": 0, "seed": 1}


def stream_speed(url: str, model: str) -> tuple[float, float]:
    """
    Time to first byte and generated tokens per second of one streamed
    answer, as a client sees them.
    """
    body = json.dumps({"model": model, "stream": True, **PROMPT}).encode()
    started = time.perf_counter()
    arrivals = []
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=JSON)
    with urllib.request.urlopen(request, timeout=120) as answer:
        first = None
        for line in answer:
            if first is None:
                first = time.perf_counter() - started
            if line.startswith(b"data: {") and b'"content"' in line:
                arrivals.append(time.perf_counter())
    speed = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return first, speed


def main() -> int:
    if not os.path.isfile(GGUF):
        print(f"no model at {GGUF}: run scripts/prepare-real-llm.sh", file=sys.stderr)
        return 1
    rows = []
    one_token = json.dumps({"model": "m", **PROMPT, "max_tokens": 1}).encode()

    def direct_cold_start() -> float:
        # spawn, poll /v1/models every millisecond, then the one-token request
        port = free_port()
        started = time.perf_counter()
        server = subprocess.Popen(SERVER + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(f"http://127.0.0.1:{port}/v1/models")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=one_token, headers=JSON)
        urllib.request.urlopen(request, timeout=120).read()
        elapsed = time.perf_counter() - started
        server.terminate()
        server.wait()
        return elapsed

    command = " ".join(SERVER) + " --port ${PORT}"
    with tempfile.TemporaryDirectory() as folder:
        proxy = Proxy(
            f"""
            startPort: {free_port()}
            models:
              m:
                cmd: {json.dumps(command)}
                checkEndpoint: /v1/models
            """,
            folder,
        )

        def proxied_cold_start() -> float:
            urllib.request.urlopen(proxy.url + "/unload").read()
            started = time.perf_counter()
            request = urllib.request.Request(proxy.url + "/v1/chat/completions", data=one_token, headers=JSON)
            urllib.request.urlopen(request, timeout=120).read()
            return time.perf_counter() - started

        try:
            direct_cold_start()  # warm the page cache
            own, cold = [], []
            for _ in range(5):  # interleaved, so drift affects both alike
                own.append(direct_cold_start())
                cold.append(proxied_cold_start())
            proxied = [stream_speed(proxy.url, "m") for _ in range(6)]
        finally:
            proxy.stop()
    port = free_port()
    server = subprocess.Popen(SERVER + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(f"http://127.0.0.1:{port}/v1/models")
    direct = [stream_speed(f"http://127.0.0.1:{port}", "m") for _ in range(6)]
    server.terminate()
    server.wait()
    own_ms = statistics.median(own) * 1000
    cold_ms = statistics.median(cold) * 1000
    rows.append(("cold start to a 1-token answer", f"{cold_ms:.0f}", f"{own_ms:.0f}", "ms",
                 f"added {cold_ms - own_ms:.0f} ms"))
    direct_speed = statistics.median(speed for _, speed in direct)
    proxied_speed = statistics.median(speed for _, speed in proxied)
    rows.append(("generation speed (streamed)", f"{proxied_speed:.1f}", f"{direct_speed:.1f}", "tokens/s",
                 f"ratio {proxied_speed / direct_speed:.3f}"))
    direct_first = statistics.median(first for first, _ in direct) * 1000
    proxied_first = statistics.median(first for first, _ in proxied) * 1000
    rows.append(("first byte, warm", f"{proxied_first:.1f}", f"{direct_first:.1f}", "ms", ""))
    print("benchmark                     proxied  direct  unit      notes")
    for name, proxied_value, direct_value, unit, note in rows:
        print(f"{name:<29} {proxied_value:>7}  {direct_value:>6}  {unit:<8}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
