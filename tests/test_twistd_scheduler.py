"""
The swap-aware scheduler through C{twistd llamaswap} on real sockets and
real model servers: a client hammering one model cannot starve another.
"""

from __future__ import annotations

import json
import threading
import time

from tests.helpers import fake, free_port, free_port_range
from tests.test_twistd_newest import call, twistd, wait_ready  # noqa: F401 (fixture)


def test_a_client_hammering_one_model_cannot_starve_another(twistd, tmp_path):  # noqa: F811
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"startPort: {free_port_range(2)}\nlogLevel: warn\n"
        "models:\n"
        f"  hammered:\n    cmd: {fake('hammered')}\n"
        f"  other:\n    cmd: {fake('other', '--startup-delay', '1')}\n"
        "routing:\n  scheduler:\n    settings:\n      swap-aware: {maxWait: 3}\n"
    )
    process = twistd("-c", str(config), "--listen", f"127.0.0.1:{port}")
    wait_ready(port, process)
    body = json.dumps({"model": "hammered"}).encode()
    assert call(port, "POST", "/v1/chat/completions", body)[0] == 200  # loaded
    stop = threading.Event()
    served: list[int] = []

    def hammer():
        while not stop.is_set():
            served.append(call(port, "POST", "/v1/chat/completions?wait=0.05", body)[0])

    hammers = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in hammers:
        thread.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        status, answer = call(port, "POST", "/v1/chat/completions", json.dumps({"model": "other"}).encode())
        waited = time.monotonic() - started
        before = len(served)
        time.sleep(3)
    finally:
        stop.set()
        for thread in hammers:
            thread.join(30)
    assert status == 200 and json.loads(answer)["responseMessage"] == "other"
    # held back at most maxWait (3 s) for the hammered model's batch (less
    # when the hammering clients leave a gap), then one swap: its last
    # requests, a stop, and the other model's 1 s load
    assert waited <= 3 + 1 + 2.5, waited
    assert before > 10 and len(served) > before and set(served) == {200}  # served before, and again after
