"""
The swap-aware scheduler on a fake clock: requests are batched per model
instead of swapping in arrival order, no request is held back beyond
maxWait, the next model is chosen by priority then age, and the queue is
bounded in size and time.
"""

from __future__ import annotations

import random

import pytest

from llamaswap.routing.groups import conflicts
from llamaswap.routing.scheduler import QueueFull, QueueTimeout, TooManyRequests
from tests.routing.test_scheduler import SchedulerHarness

CONFIG = """
models:
  a: {cmd: "sleep ${PORT}"}
  b: {cmd: "sleep ${PORT}"}
  c: {cmd: "sleep ${PORT}"}
  x: {cmd: "sleep ${PORT}"}
groups:
  one-at-a-time:
    swap: true
    exclusive: false
    members: [a, b, c]
  beside:
    swap: false
    exclusive: false
    members: [x]
routing:
  scheduler:
    settings:
      swap-aware: {maxWait: 10, maxQueue: 5, queueTimeout: 60}
"""


class Harness(SchedulerHarness):
    def __init__(self, text: str = CONFIG):
        super().__init__(text)

    def tick(self, seconds: float = 0.05) -> None:
        """
        Let fake time pass; servers asked to stop exit.
        """
        self.reactor.advance(seconds)
        for process in self.processes.values():
            if process.state == "stopping" and process._transport is not None:
                process._transport.exit(signal=15)

    def wait(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.05)):
            self.tick()

    def admitted(self, outcome) -> bool:
        return bool(outcome) and not hasattr(outcome[0], "check")

    def serve(self, outcome):
        """
        The lease of an admitted request, its model started.
        """
        assert self.admitted(outcome), outcome
        lease = outcome[0]
        lease.process.ensure_ready()
        return lease

    def loads(self, model_id: str) -> int:
        return self.transitions(model_id).count("starting")


def test_the_loaded_model_keeps_serving_until_the_other_waited_max_wait():
    harness = Harness()
    lease = harness.run("a")
    waiting_b = harness.request("b")
    harness.wait(1)
    assert waiting_b == [] and harness.processes["a"].state == "ready"
    # more requests for a keep flowing while b's request is younger than maxWait
    late = [harness.request("a") for _ in range(3)]
    harness.tick()
    assert all(harness.admitted(outcome) for outcome in late)
    for outcome in late:
        harness.serve(outcome).release()
    harness.wait(8.5)  # b has waited 9.5 s
    assert waiting_b == [] and not harness.scheduler.is_draining("a")
    harness.wait(0.6)  # 10.1 s: a closes, takes no new requests, finishes its own
    assert harness.scheduler.is_draining("a")
    closed_out = harness.request("a")
    harness.tick()
    assert closed_out == [] and waiting_b == []
    lease.release()
    harness.wait(0.5)
    assert harness.admitted(waiting_b) and harness.processes["a"].state == "stopped"
    assert closed_out == []  # waits for a's next turn
    harness.serve(waiting_b)
    harness.wait(0.5)
    assert harness.running() == ["b"]


def test_an_idle_model_makes_room_at_once():
    harness = Harness()
    harness.run("a").release()
    waiting = harness.request("b")
    harness.wait(0.5)
    assert harness.admitted(waiting)


def test_the_other_models_whole_queue_is_one_batch():
    harness = Harness()
    lease = harness.run("a")
    queued_b = [harness.request("b") for _ in range(4)]
    harness.wait(10.1)
    lease.release()
    harness.wait(0.5)
    assert all(harness.admitted(outcome) for outcome in queued_b)
    leases = [harness.serve(outcome) for outcome in queued_b]
    harness.wait(0.5)
    assert harness.loads("b") == 1 and harness.processes["b"].inflight == 4
    for lease in leases:
        lease.release()


def test_the_next_model_is_the_highest_priority_then_the_oldest():
    harness = Harness(CONFIG.replace("routing:\n  scheduler:\n", "routing:\n  scheduler:\n    use: swap-aware\n"))
    harness.scheduler._priority = {"c": 5}
    lease = harness.run("a")
    waiting_b = harness.request("b")
    harness.wait(1)
    waiting_c = harness.request("c")
    harness.wait(9.5)  # b's request has waited maxWait: a closes
    lease.release()
    harness.wait(0.5)
    assert harness.admitted(waiting_c) and waiting_b == []  # c ranks higher
    harness.serve(waiting_c).release()
    harness.wait(0.5)
    assert harness.admitted(waiting_b)  # c has nothing left: b at once
    # equal priority: the oldest request decides
    harness.serve(waiting_b)
    harness.scheduler._priority = {}
    waiting_a = harness.request("a")
    harness.wait(1)
    later_c = harness.request("c")
    harness.wait(0.5)
    harness.processes["b"].release()
    harness.scheduler.released()
    harness.wait(0.5)
    assert harness.admitted(waiting_a) and later_c == []


def test_models_that_do_not_conflict_are_never_held_back():
    harness = Harness()
    lease = harness.run("a")
    harness.request("b")
    beside = harness.request("x")
    harness.tick()
    assert harness.admitted(beside)
    lease.release()


def test_max_queue_counts_requests_waiting_for_their_turn_or_the_load():
    harness = Harness()
    lease = harness.run("a")
    for _ in range(5):
        harness.request("b")
    with pytest.raises(QueueFull) as refused:
        harness.scheduler.request("b")
    assert refused.value.retry_after >= 1 and "maxQueue" in str(refused.value)
    assert harness.scheduler.queued("b") == 5
    lease.release()
    harness.wait(0.3)  # admitted, b is loading: still not sent to its server
    assert harness.processes["b"].inflight == 5 and harness.scheduler.queued("b") == 5
    with pytest.raises(QueueFull):
        harness.scheduler.request("b")


def test_queue_timeout_refuses_with_a_retry_after():
    harness = Harness(CONFIG.replace("maxWait: 10", "maxWait: 100"))
    lease = harness.run("a")
    waiting = harness.request("b")
    harness.wait(59.9)
    assert waiting == []
    harness.wait(0.2)
    [failure] = waiting
    assert failure.check(QueueTimeout) and failure.value.retry_after >= 1
    assert harness.scheduler.queued("b") == 0
    lease.release()


def test_a_client_leaving_the_queue_starts_nothing():
    harness = Harness()
    lease = harness.run("a")
    deferred = harness.scheduler.request("b")
    harness.wait(1)
    deferred.cancel()
    deferred.addErrback(lambda _: None)
    assert harness.scheduler.waiting == 0 and harness.scheduler.queued("b") == 0
    harness.wait(20)
    lease.release()
    harness.wait(1)
    assert harness.loads("b") == 0 and harness.running() == ["a"]


def test_retry_after_follows_the_measured_load_and_answer_times():
    harness = Harness(CONFIG.replace("  a: {cmd", "  a: {concurrencyLimit: 1, cmd"))
    harness.run("a").release()  # loaded
    lease = harness.run("a")
    with pytest.raises(TooManyRequests) as refused:
        harness.scheduler.request("a")
    assert refused.value.retry_after == 2  # nothing measured yet: two seconds an answer
    harness.wait(3)
    lease.release()  # a answered in ~3 s
    lease = harness.run("a")
    with pytest.raises(TooManyRequests) as refused:
        harness.scheduler.request("a")
    assert refused.value.retry_after >= 3
    lease.release()


@pytest.mark.parametrize("seed, rate", [(seed, rate) for seed in range(4) for rate in (0.08, 0.4)])
def test_randomised_interleavings_keep_the_bounds(seed, rate):
    """
    Requests for two conflicting models (and one beside them) arrive at
    random and take a random time to answer: conflicting models never run
    together, every request is served, and none waits longer than maxWait,
    one swap and the longest answer behind the other model.
    """
    harness = Harness(CONFIG.replace("maxQueue: 5", "maxQueue: 200"))
    rng = random.Random(seed)
    table = conflicts(harness.config)
    violations: list = []
    for process in harness.processes.values():
        original = process.acquire

        def checked(process=process, original=original):
            for other in table[process.id]:
                blocker = harness.processes[other]
                if blocker.inflight or blocker.state not in ("stopped", "shutdown"):
                    violations.append((process.id, other, blocker.state))
            original()

        process.acquire = checked
    longest_answer = 2.0
    waits: list[float] = []
    running: list[tuple[float, object]] = []  # (release at, lease)
    requested = served = 0
    for step in range(3000):
        now = harness.reactor.seconds()
        if step < 2400 and rng.random() < rate:
            model = rng.choice(["a", "a", "b", "x"])
            try:
                deferred = harness.scheduler.request(model)
            except (QueueFull, TooManyRequests):
                continue
            requested += 1

            def admitted(lease, arrived=now):
                waits.append(harness.reactor.seconds() - arrived)
                lease.process.ensure_ready()
                running.append((harness.reactor.seconds() + rng.uniform(0.1, longest_answer), lease))
                return lease

            deferred.addCallback(admitted)
        for entry in [entry for entry in running if entry[0] <= now and entry[1].process.state == "ready"]:
            running.remove(entry)
            entry[1].release()
            served += 1
        harness.tick()
    while running or harness.scheduler.waiting:
        now = harness.reactor.seconds()
        for entry in [entry for entry in running if entry[0] <= now and entry[1].process.state == "ready"]:
            running.remove(entry)
            entry[1].release()
            served += 1
        harness.tick()
    assert violations == []
    assert served == requested > 100
    swap = 1.0  # stop, start and the first health check in the fake world
    assert max(waits) <= 10 + swap + longest_answer + swap, max(waits)


def test_the_matrix_router_batches_alike():
    from tests.routing.test_scheduler import MATRIX

    harness = Harness(MATRIX)
    lease = harness.run("gemma")
    voice = harness.run("voice")  # allowed together with gemma
    waiting_big = harness.request("big")  # a set of its own: conflicts with both
    harness.wait(1)
    more = harness.request("gemma")
    harness.tick()
    assert harness.admitted(more) and waiting_big == []  # gemma keeps serving for now
    harness.serve(more).release()
    harness.wait(30)  # the default maxWait: gemma and voice close
    assert harness.scheduler.is_draining("gemma") and harness.scheduler.is_draining("voice")
    lease.release()
    voice.release()
    harness.wait(0.5)
    assert harness.admitted(waiting_big)
    harness.serve(waiting_big)
    harness.wait(0.5)
    assert harness.running() == ["big"]
