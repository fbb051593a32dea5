"""
The supervisor through C{twistd llamaswap}, with small scripts as model
servers: a slow loader that prints its progress is served, a silent one and
an endless one fail, one that exits at once is marked failed and refused
without new spawns until its cool-down is over, and a fallback answers for
a failed model.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from tests.helpers import fake, free_port, free_port_range, yaml_quote
from tests.test_twistd_newest import call, output, twistd, wait_ready  # noqa: F401 (fixture)

LOADER = """
import os, sys, time
for percent in range(0, 100, 5):
    print(f"loading {percent}%", flush=True)
    time.sleep(1)
os.execv(sys.executable, [sys.executable, "-m", "llamaswap.testing.upstream", "--port", sys.argv[1], "--respond", "loader"])
"""
CHATTY = """
import itertools, time
for count in itertools.count():
    print(f"still working {count}", flush=True)
    time.sleep(0.5)
"""


def script(tmp_path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return f"{sys.executable} {path}"


def chat(port: int, model: str) -> tuple[int, dict, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps({"model": model}).encode()
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())


def test_supervision_through_twistd(twistd, tmp_path):  # noqa: F811
    port = free_port()
    loader = script(tmp_path, "loader", LOADER) + " ${PORT}"
    chatty = script(tmp_path, "chatty", CHATTY)
    crashing = script(tmp_path, "crashing", "import sys\nprint('cannot load model', flush=True)\nsys.exit(3)\n")
    backed = script(tmp_path, "backed", "import sys\nsys.exit(4)\n")
    spare_ports = free_port_range(4)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(6)}\nhealthCheckTimeout: 15\nfailureCooldown: 3\n"
        "models:\n"
        f"  loader:\n    cmd: {yaml_quote(loader)}\n"
        f"  silent:\n    cmd: sleep 600\n    proxy: http://127.0.0.1:{spare_ports}\n"
        f"  endless:\n    cmd: {yaml_quote(chatty)}\n    startTimeout: 4\n    proxy: http://127.0.0.1:{spare_ports + 1}\n"
        f"  crashing:\n    cmd: {yaml_quote(crashing)}\n    proxy: http://127.0.0.1:{spare_ports + 2}\n"
        f"  backed:\n    cmd: {yaml_quote(backed)}\n    fallback: spare\n    proxy: http://127.0.0.1:{spare_ports + 3}\n"
        f"  spare:\n    cmd: {fake('spare')}\n"
        "groups:\n  all:\n    swap: false\n    members: [loader, silent, endless, crashing, backed, spare]\n"
    )
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    results: dict[str, tuple] = {}

    def timed(model):
        started = time.monotonic()
        results[model] = (*chat(port, model), time.monotonic() - started)

    slow = [threading.Thread(target=timed, args=(model,)) for model in ("loader", "silent", "endless")]
    for thread in slow:
        thread.start()
    # exits at once: three 502s, then refused at once without a new spawn
    codes = [chat(port, "crashing")[0] for _ in range(3)]
    assert codes == [502, 502, 502]
    started = time.monotonic()
    status, headers, body = chat(port, "crashing")
    assert status == 503 and time.monotonic() - started < 0.5
    assert 1 <= int(headers["retry-after"]) <= 3 and body["error"]["code"] == "model_failed"
    assert "cannot load model" in body["error"]["message"]
    assert output(process).count("<crashing> starting") == 3
    status, running = call(port, "GET", "/running")
    failed = next(entry for entry in json.loads(running)["running"] if entry["model"] == "crashing")
    assert failed["state"] == "failed" and "cannot load model" in failed["reason"]
    time.sleep(3.2)  # the cool-down is over: one more try
    assert chat(port, "crashing")[0] == 502 and output(process).count("<crashing> starting") == 4
    assert chat(port, "crashing")[0] == 503  # failed again at once
    # a failed model with a fallback: the spare answers
    for _ in range(4):
        status, headers, body = chat(port, "backed")
        assert status == 200 and body["responseMessage"] == "spare" and headers["x-llamaswap-fallback"] == "spare"
    for thread in slow:
        thread.join(60)
    status, _, body, seconds = results["loader"]
    assert status == 200 and body["responseMessage"] == "loader" and seconds >= 19  # slow, but progressing
    status, _, body, seconds = results["silent"]
    assert status == 502 and "without a sign of progress" in body["error"]["message"] and 14 <= seconds <= 20
    status, _, body, seconds = results["endless"]
    assert status == 502 and "start timeout of 4s" in body["error"]["message"] and seconds < 8
