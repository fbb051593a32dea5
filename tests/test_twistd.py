"""
The installed command line, as users run it: C{twistd llamaswap} in the
foreground and as a daemon, the demo configuration, configuration errors,
and no model server surviving the proxy -- not even a SIGKILL of it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import psutil
import pytest

from tests.helpers import fake, free_port, free_port_range

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def http(url: str, data: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for_health(port: int, process: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"twistd exited with {process.returncode}: {process.stdout.read()}")
        try:
            if http(f"http://127.0.0.1:{port}/health", timeout=1) == (200, b"OK"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("llamaswap did not answer /health")


def settles(condition, timeout: float = 10) -> bool:
    """
    Whether C{condition()} becomes true within C{timeout} seconds (log lines
    are written a moment after the answer).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def model_server_pids(twistd_pid: int) -> list[int]:
    children = psutil.Process(twistd_pid).children(recursive=True)
    return [child.pid for child in children if "llamaswap.testing.upstream" in " ".join(child.cmdline())]


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            startPort: {free_port_range(4)}
            models:
              m1:
                cmd: {fake("m1")}
              m2:
                cmd: {fake("m2")}
            groups:
              both:
                swap: false
                members: [m1, m2]
            """
        )
    )
    return path


@pytest.fixture
def spawn(tmp_path):
    processes: list[subprocess.Popen] = []

    def start(*args: str, cwd=None) -> subprocess.Popen:
        process = subprocess.Popen(
            [TWISTD, *args],
            cwd=cwd or tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_foreground_serves_health_and_stops_models_on_sigterm(spawn, config_file):
    port = free_port()
    process = spawn("-n", "--pidfile=", "llamaswap", "-c", str(config_file), "--listen", f"127.0.0.1:{port}")
    wait_for_health(port, process)
    status, body = http(
        f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps({"model": "m1"}).encode()
    )
    assert status == 200 and json.loads(body)["responseMessage"] == "m1"
    http(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps({"model": "m2"}).encode())
    servers = model_server_pids(process.pid)
    assert len(servers) == 2
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    # twistd reports the signal it stopped for, as a shell expects
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Server Shut Down." in output
    assert all(gone(pid, 2) for pid in servers)
    assert "stopping 2 model(s) before exiting" in output
    # the access log, in twistd's own text format
    assert re.search(
        r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[proxy#info\] \[INFO\] Request 127\.0\.0\.1 '
        r'"POST /v1/chat/completions HTTP/1\.1" 200 \d+ "Python-urllib/[\d.]+" [\d.]+(µs|ms|s)$',
        output,
        re.MULTILINE,
    ), output


def test_no_orphan_after_sigkill_of_the_proxy(spawn, config_file):
    port = free_port()
    process = spawn("-n", "--pidfile=", "llamaswap", "-c", str(config_file), "--listen", f"127.0.0.1:{port}")
    wait_for_health(port, process)
    for model in ("m1", "m2"):
        http(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps({"model": model}).encode())
    servers = model_server_pids(process.pid)
    assert len(servers) == 2
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert all(gone(pid, 2) for pid in servers), "a model server outlived llamaswap"


def test_default_pidfile_in_foreground(spawn, config_file, tmp_path):
    port = free_port()
    process = spawn("-n", "llamaswap", "-c", str(config_file), "--listen", f":{port}")
    wait_for_health(port, process)
    assert (tmp_path / "twistd.pid").read_text().strip() == str(process.pid)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=20)
    assert process.returncode in (0, -signal.SIGINT)
    assert "Server Shut Down." in output
    assert not (tmp_path / "twistd.pid").exists()


def test_daemon_with_pidfile_and_logfile(spawn, config_file, tmp_path):
    port = free_port()
    pidfile, logfile = tmp_path / "llamaswap.pid", tmp_path / "llamaswap.log"
    launcher = spawn(
        "--pidfile", str(pidfile), "--logfile", str(logfile),
        "llamaswap", "-c", str(config_file), "--listen", f"127.0.0.1:{port}",
    )
    launcher.communicate(timeout=30)
    assert launcher.returncode == 0
    wait_for_health(port)
    daemon = int(pidfile.read_text())
    try:
        http(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps({"model": "m1"}).encode())
        servers = model_server_pids(daemon)
        assert len(servers) == 1
        assert settles(lambda: '"POST /v1/chat/completions HTTP/1.1" 200' in logfile.read_text())
        # SIGUSR1 starts a new log file, as twistd's own log file does
        os.kill(daemon, signal.SIGUSR1)
        rotated = tmp_path / "llamaswap.log.1"
        assert settles(rotated.exists)
        assert '"POST /v1/chat/completions HTTP/1.1" 200' in rotated.read_text()
        http(f"http://127.0.0.1:{port}/v1/models")
        assert settles(lambda: "GET /v1/models" in logfile.read_text())
        assert "GET /v1/models" not in rotated.read_text()
        assert "POST /v1/chat/completions" not in logfile.read_text()
    finally:
        os.kill(daemon, signal.SIGTERM)
    assert gone(daemon, 20)
    assert all(gone(pid, 2) for pid in servers)
    assert "stopping 1 model(s) before exiting" in logfile.read_text()


def test_daemon_logs_to_twistd_log_by_default(spawn, config_file, tmp_path):
    port = free_port()
    launcher = spawn("--pidfile", "llamaswap.pid", "llamaswap", "-c", str(config_file), "--listen", f"127.0.0.1:{port}")
    launcher.communicate(timeout=30)
    assert launcher.returncode == 0
    wait_for_health(port)
    daemon = int((tmp_path / "llamaswap.pid").read_text())
    try:
        http(f"http://127.0.0.1:{port}/v1/models")
        assert settles(lambda: '"GET /v1/models HTTP/1.1" 200' in (tmp_path / "twistd.log").read_text())
    finally:
        os.kill(daemon, signal.SIGTERM)
    assert gone(daemon, 20)


def test_demo_configuration_without_config(spawn, tmp_path):
    port = free_port()
    process = spawn("-n", "--pidfile=", "llamaswap", "--listen", f"127.0.0.1:{port}")
    wait_for_health(port, process)
    status, body = http(f"http://127.0.0.1:{port}/v1/models")
    ids = [entry["id"] for entry in json.loads(body)["data"]]
    assert ids == ["demo-embed", "demo-large", "demo-small"]
    status, body = http(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps({"model": "demo-small", "messages": []}).encode(),
    )
    assert status == 200 and json.loads(body)["responseMessage"] == "demo-small"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    assert "BUILT-IN DEMO" in output


def test_config_yaml_in_working_directory_is_used(spawn, config_file):
    port = free_port()
    process = spawn("-n", "--pidfile=", "llamaswap", "--listen", f"127.0.0.1:{port}", cwd=config_file.parent)
    wait_for_health(port, process)
    status, body = http(f"http://127.0.0.1:{port}/v1/models")
    assert [entry["id"] for entry in json.loads(body)["data"]] == ["m1", "m2"]
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)


def test_invalid_config_exits_non_zero_with_the_reason(spawn, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  qwen:\n    cmd: srv --port ${PORT} -c ${ctxx}\nmacros:\n  ctx: 4096\n")
    process = spawn("-n", "--pidfile=", "llamaswap", "-c", str(bad), "--listen", f"127.0.0.1:{free_port()}")
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "unknown macro '${ctxx}' found in qwen.cmd (did you mean '${ctx}'?)" in output
    assert "Traceback" not in output


def test_missing_config_file(spawn, tmp_path):
    process = spawn("-n", "--pidfile=", "llamaswap", "-c", str(tmp_path / "nope.yaml"))
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "cannot read config file" in output


def test_only_one_tls_file_is_an_error(spawn, config_file):
    process = spawn("-n", "--pidfile=", "llamaswap", "-c", str(config_file), "--tls-cert-file", "cert.pem")
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "Both --tls-cert-file and --tls-key-file must be provided" in output


def test_version_and_help(spawn):
    process = spawn("llamaswap", "--version")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    from llamaswap import __version__

    assert output.strip().endswith(f"llamaswap version {__version__}")
    process = spawn("llamaswap", "--help")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    for option in ("--config=", "-c", "--listen=", "--watch-config", "--tls-cert-file=", "--tls-key-file=", "--version"):
        assert option in output
