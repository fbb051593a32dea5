"""
The load tool, python -m llamaswap.bench, against the fake upstream.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from llamaswap.bench import percentile
from tests.helpers import free_port


def test_percentile_nearest_rank():
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([], 0.5) is None


@pytest.fixture(scope="module")
def upstream():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llamaswap.testing.upstream", "--port", str(port), "--silent"],
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "the fake upstream did not start"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(10)


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamaswap.bench", *args], capture_output=True, text=True, timeout=120)


def test_json_summary(upstream):
    result = bench("--url", upstream, "--model", "m", "-n", "60", "-c", "6", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["statuses"] == {"200": 60}
    assert summary["errors"] == {}
    assert summary["requests_per_second"] > 0
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert "60/60 done" in result.stderr  # the live progress line


def test_streaming_mode_and_text_output(upstream):
    result = bench("--url", upstream, "--model", "m", "-n", "4", "-c", "2", "--stream",
                   "--path", "/v1/chat/completions?chunks=20&delay=0.005")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("statuses:   200: 4") for line in lines)
    assert any(line.startswith("first byte: p50 ") for line in lines)
    gaps = next(line for line in lines if line.startswith("chunk gaps:"))
    assert "p50" in gaps and "max" in gaps
    chunks = next(line for line in lines if line.startswith("chunks:"))
    assert float(chunks.split()[1]) >= 20  # streamed chunk by chunk


def test_failures_are_counted_and_fail_the_run():
    result = bench("--url", f"http://127.0.0.1:{free_port()}", "--model", "m", "-n", "5", "-c", "5", "--json", "--quiet")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert sum(summary["errors"].values()) == 5
