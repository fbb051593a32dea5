"""
Readiness that understands loading, and a supervisor that tells broken
from busy: on a fake clock with fake server processes.
"""

from __future__ import annotations

import pytest

from llamaswap.models.process import StartFailed
from llamaswap.models.supervisor import Supervisor
from llamaswap.routing.scheduler import ModelFailed
from tests.helpers import ProcessHarness

CONFIG = """
healthCheckTimeout: 15
maxStartFailures: 3
failureCooldown: 60
models:
  slow:
    cmd: sleep --port ${PORT}
  capped:
    cmd: sleep --port ${PORT}
    startTimeout: 30
  broken:
    cmd: sleep --port ${PORT}
  patient:
    cmd: sleep --port ${PORT}
    healthCheckTimeout: 40
    maxStartFailures: 1
    failureCooldown: 5
"""


def outcome(deferred):
    results: list = []
    deferred.addBoth(results.append)
    return results


@pytest.fixture
def harness():
    return ProcessHarness(CONFIG)


def test_a_server_printing_progress_is_given_time(harness):
    process = harness.processes["slow"]
    waiting = outcome(process.ensure_ready())
    for second in range(20):  # "loading NN%" every second, 20 s in all
        harness.transport("slow").output(f"loading {second * 5}%\n".encode())
        harness.reactor.pump([0.5, 0.5])
    assert waiting == [] and process.state == "starting"
    harness.make_ready("slow")
    harness.reactor.pump([1] * 2)
    assert waiting == [None] and process.state == "ready"


def test_cpu_time_counts_as_progress_and_a_sleeping_server_fails(harness):
    process = harness.processes["slow"]
    waiting = outcome(process.ensure_ready())
    for second in range(25):  # silent, but busy
        harness.cpu["slow"] = second * 0.5
        harness.reactor.pump([1])
    assert waiting == [] and process.state == "starting"
    harness.reactor.pump([1] * 16)  # then idle: no CPU time, no output
    [failure] = waiting
    assert failure.check(StartFailed) and "without a sign of progress" in str(failure.value)
    assert "health check timed out after 15s" in str(failure.value)


def test_start_timeout_caps_a_start_that_progresses_forever(harness):
    process = harness.processes["capped"]
    waiting = outcome(process.ensure_ready())
    for second in range(31):
        harness.transport("capped").output(f"still going {second}\n".encode())
        harness.reactor.pump([1])
    [failure] = waiting
    assert "not ready within the start timeout of 30s" in str(failure.value)


def test_per_model_health_check_timeout():
    harness = ProcessHarness(CONFIG)
    process = harness.processes["patient"]
    waiting = outcome(process.ensure_ready())
    harness.reactor.pump([1] * 30)
    assert waiting == []
    harness.reactor.pump([1] * 11)
    assert "after 40s" in str(waiting[0].value)


def fail_start(harness, model_id, message=b"error: cannot open model file\n"):
    process = harness.processes[model_id]
    waiting = outcome(process.ensure_ready())
    transport = harness.transport(model_id)
    transport.output(message)
    transport.exit(code=1)
    assert waiting and waiting[0].check(StartFailed)
    return waiting[0]


def test_consecutive_failures_mark_the_model_failed_then_retry_after_the_cooldown(harness):
    supervisor = harness.processes["broken"].supervisor
    for attempt in range(1, 4):
        fail_start(harness, "broken")
        assert supervisor.failures == attempt
    assert supervisor.failed and supervisor.refusal() == 60
    assert "exited with code 1" in supervisor.reason and "cannot open model file" in supervisor.reason
    harness.reactor.advance(30)
    assert supervisor.refusal() == 30
    harness.reactor.advance(30.5)
    assert supervisor.refusal() is None  # one more try may go
    fail_start(harness, "broken")
    assert supervisor.refusal() == 120  # failed again: the cool-down doubles
    harness.reactor.advance(121)
    process = harness.processes["broken"]
    waiting = outcome(process.ensure_ready())
    harness.make_ready("broken")
    harness.reactor.pump([0.5] * 4)
    assert waiting == [None] and supervisor.failed  # ready, not yet trusted
    harness.reactor.advance(10)
    assert not supervisor.failed and supervisor.failures == 0  # stayed up: normal again


def test_a_crash_right_after_ready_counts_a_later_one_does_not(harness):
    process = harness.processes["broken"]
    harness.make_ready("broken")
    for _ in range(2):
        waiting = outcome(process.ensure_ready())
        harness.reactor.pump([0.5] * 2)
        assert waiting == [None]
        harness.reactor.advance(3)
        harness.transport("broken").exit(code=139)
    assert process.supervisor.failures == 2
    waiting = outcome(process.ensure_ready())
    harness.reactor.pump([0.5] * 2)
    harness.reactor.advance(30)  # up long enough: the earlier failures are forgiven
    assert process.supervisor.failures == 0
    harness.transport("broken").exit(code=139)
    assert process.supervisor.failures == 0
    assert "exited with code 139 unexpectedly" in harness.logs.proxy_monitor.history().decode()


def test_cooldown_doubles_up_to_an_hour():
    from llamaswap.config.records import Supervision
    from llamaswap.testing.fakes import FakeReactor

    clock = FakeReactor()
    supervisor = Supervisor("m", Supervision(max_start_failures=1, failure_cooldown=1000), clock)
    supervisor.start_failed("boom")
    assert supervisor.refusal() == 1000
    for expected in (2000, 3600, 3600):
        clock.advance(supervisor.cooldown + 1)
        supervisor.start_failed("boom")
        assert supervisor.cooldown == expected
    supervisor.reset()
    assert not supervisor.failed and supervisor.cooldown == 1000


# ---------------------------------------------------------------- through the manager


FAKE = """
healthCheckTimeout: 15
failureCooldown: 30
models:
  broken:
    cmd: {broken}
    fallback: spare
  spare:
    cmd: {spare}
  lonely:
    cmd: {lonely}
"""


def test_a_failed_model_is_refused_at_once_and_reset_by_an_unload(memory):
    from tests.helpers import fake

    server = memory(
        FAKE.format(broken=fake("broken", "--startup-delay", "5", "--crash-after", "0.1"), spare=fake("spare"), lonely=fake("lonely", "--startup-delay", "5", "--crash-after", "0.1"))
    )
    codes = [server.fetch("POST", "/v1/chat/completions", json={"model": "lonely"})[0].code for _ in range(3)]
    assert codes == [502, 502, 502]
    spawned = len(server.processes)
    response, body = server.fetch("POST", "/v1/chat/completions", json={"model": "lonely"})
    assert response.code == 503 and 1 <= int(response.headers.getRawHeaders("retry-after")[0]) <= 30
    assert "failed to start 3 times in a row" in body.decode() and len(server.processes) == spawned
    import json

    running = {entry["model"]: entry for entry in json.loads(server.fetch("GET", "/running")[1])["running"]}
    assert running["lonely"]["state"] == "failed" and "exited with code" in running["lonely"]["reason"]
    with pytest.raises(ModelFailed):
        server.service.manager.use_now("lonely")
    assert server.fetch("POST", "/api/models/unload/lonely")[0].code == 200
    assert server.fetch("POST", "/v1/chat/completions", json={"model": "lonely"})[0].code == 502  # tried again


def test_the_fallback_serves_a_failed_model(memory):
    import json

    from tests.helpers import fake

    server = memory(
        FAKE.format(broken=fake("broken", "--startup-delay", "5", "--crash-after", "0.1"), spare=fake("spare"), lonely=fake("lonely"))
    )
    for _ in range(4):  # failing starts, then the failed state: the spare answers each time
        response, body = server.fetch("POST", "/v1/chat/completions", json={"model": "broken"})
        assert response.code == 200 and json.loads(body)["responseMessage"] == "spare"
        assert response.headers.getRawHeaders("x-llamaswap-fallback") == ["spare"]
        assert json.loads(body)["model"] == "spare"  # the body names the model that answers
    assert server.service.manager.state_shown("broken") == "failed"
