"""
Group policies: swap, exclusive and persistent, and the admission queue.
"""

import random

import pytest

from llamaswap.routing.groups import conflicts
from llamaswap.routing.scheduler import Scheduler, ShuttingDown, TooManyRequests
from tests.helpers import ProcessHarness, config_from

CONFIG = """
models:
  a: {cmd: "sleep ${PORT}"}
  b: {cmd: "sleep ${PORT}"}
  c: {cmd: "sleep ${PORT}", concurrencyLimit: 2}
  x: {cmd: "sleep ${PORT}"}
  y: {cmd: "sleep ${PORT}"}
  p: {cmd: "sleep ${PORT}"}
  q: {cmd: "sleep ${PORT}"}
  solo: {cmd: "sleep ${PORT}"}
groups:
  swapper:
    swap: true
    exclusive: true
    members: [a, b, c]
  together:
    swap: false
    exclusive: false
    members: [x, y]
  forever:
    swap: false
    exclusive: false
    persistent: true
    members: [p, q]
"""


FIFO = CONFIG.replace("groups:", "routing:\n  scheduler:\n    use: fifo\ngroups:")


class SchedulerHarness(ProcessHarness):
    def __init__(self, text=CONFIG):
        super().__init__(text)
        self.scheduler = Scheduler(self.config, self.processes, self.logs, clock=self.reactor)
        for model_id in self.processes:
            self.make_ready(model_id)

    def request(self, model_id):
        outcome = []
        self.scheduler.request(model_id).addBoth(outcome.append)
        return outcome

    def run(self, model_id):
        """
        Request a model and, once admitted, make it ready; returns the lease.
        """
        outcome = self.request(model_id)
        self.settle()
        assert outcome, f"{model_id} was not admitted"
        lease = outcome[0]
        lease.process.ensure_ready()
        self.settle()
        assert lease.process.state == "ready"
        return lease

    def settle(self):
        """
        Let timers run and let every process asked to stop exit.
        """
        for _ in range(5):
            self.reactor.advance(0.05)
            for process in self.processes.values():
                if process.state == "stopping" and process._transport is not None:
                    process._transport.exit(signal=15)

    def running(self):
        return sorted(model_id for model_id, p in self.processes.items() if p.state in ("starting", "ready"))


@pytest.fixture
def harness():
    return SchedulerHarness()


def test_conflict_table():
    table = conflicts(config_from(CONFIG))
    assert table["a"] == {"b", "c", "x", "y", "solo"}
    assert table["x"] == set()  # swap false, not exclusive
    assert table["p"] == set()
    assert table["solo"] == {"a", "b", "c", "x", "y"}  # default group: swap + exclusive, persistent spared


def test_swap_group_runs_one_member_at_a_time(harness):
    lease = harness.run("a")
    lease.release()
    harness.run("b").release()
    assert harness.running() == ["b"]
    assert harness.transitions("a") == ["starting", "ready", "stopping", "stopped"]


def test_fifo_swap_waits_for_inflight_request_of_outgoing_model():
    harness = SchedulerHarness(FIFO)
    lease_a = harness.run("a")
    waiting_b = harness.request("b")
    harness.settle()
    assert waiting_b == []
    assert harness.processes["a"].state == "ready"  # still serving its request
    assert harness.scheduler.is_draining("a")
    late_a = harness.request("a")  # arrives after b: waits for b's turn
    harness.settle()
    assert late_a == []
    lease_a.release()
    harness.settle()
    assert len(waiting_b) == 1
    assert harness.processes["a"].state == "stopped"
    lease_b = waiting_b[0]
    lease_b.process.ensure_ready()
    harness.settle()
    assert harness.running() == ["b"]
    assert late_a == []
    lease_b.release()
    harness.settle()
    assert len(late_a) == 1 and late_a[0].process.id == "a"


def test_requests_for_running_model_flow_without_swap(harness):
    first = harness.run("a")
    second = harness.run("a")
    assert harness.processes["a"].inflight == 2
    first.release()
    second.release()
    assert harness.transitions("a") == ["starting", "ready"]


def test_swap_false_group_runs_members_together(harness):
    harness.run("x").release()
    harness.run("y").release()
    assert harness.running() == ["x", "y"]


def test_exclusive_group_stops_other_groups_but_not_persistent(harness):
    harness.run("x").release()
    harness.run("p").release()
    harness.run("a").release()
    assert harness.running() == ["a", "p"]


def test_non_exclusive_group_leaves_others_running(harness):
    harness.run("a").release()
    harness.run("x").release()
    assert harness.running() == ["a", "x"]
    # ...but the exclusive group's next request clears it out again
    harness.run("a").release()
    assert harness.running() == ["a"]


def test_concurrency_limit_counts_waiting_and_inflight(harness):
    harness.run("c")
    harness.run("c")
    with pytest.raises(TooManyRequests):
        harness.scheduler.request("c")


def test_cancelled_waiter_leaves_the_queue():
    harness = SchedulerHarness(FIFO)
    lease_a = harness.run("a")
    deferred = harness.scheduler.request("b")
    assert harness.scheduler.is_draining("a")
    deferred.cancel()
    deferred.addErrback(lambda _: None)
    assert harness.scheduler.waiting == 0
    assert not harness.scheduler.is_draining("a")
    lease_a.release()
    harness.settle()
    assert harness.running() == ["a"]


def test_close_fails_waiters_and_refuses_new_requests(harness):
    harness.run("a")
    waiting = harness.request("b")
    harness.scheduler.close()
    assert waiting[0].check(ShuttingDown)
    with pytest.raises(ShuttingDown):
        harness.scheduler.request("a")


def test_release_is_idempotent(harness):
    lease = harness.run("a")
    lease.release()
    lease.release()
    assert harness.processes["a"].inflight == 0


@pytest.mark.parametrize("config", [CONFIG, FIFO], ids=["swap-aware", "fifo"])
def test_interleaved_requests_never_overlap_conflicting_models(config):
    """
    A random mix of requests for the members of one swap group and other
    groups: whatever the order, a request is only admitted when every model
    that conflicts with its own is stopped and unused, and every request is
    eventually admitted.
    """
    harness = SchedulerHarness(config)
    rng = random.Random(1234)
    table = conflicts(harness.config)
    leases = []
    violations = []
    admitted = []

    def checked_acquire(process, acquire):
        def acquire_after_check():
            for other in table[process.id]:
                blocker = harness.processes[other]
                if blocker.inflight or blocker.state != "stopped":
                    violations.append((process.id, other, blocker.state, blocker.inflight))
            acquire()

        return acquire_after_check

    for process in harness.processes.values():
        process.acquire = checked_acquire(process, process.acquire)

    def check_admission(lease):
        admitted.append(lease)
        lease.process.ensure_ready()
        leases.append(lease)
        return lease

    requested = 0
    for _ in range(400):
        if rng.random() < 0.6:
            try:
                waiting = harness.scheduler.request(rng.choice(["a", "b", "x", "y", "solo"]))
            except TooManyRequests:
                continue
            waiting.addCallback(check_admission)
            requested += 1
        elif leases:
            leases.pop(rng.randrange(len(leases))).release()
        harness.settle()
    while leases or harness.scheduler.waiting:
        if leases:
            leases.pop(rng.randrange(len(leases))).release()
        harness.settle()
    assert violations == []
    assert len(admitted) == requested > 150


MATRIX = """
models:
  gemma: {cmd: "sleep ${PORT}"}
  qwen: {cmd: "sleep ${PORT}"}
  voice: {cmd: "sleep ${PORT}"}
  rerank: {cmd: "sleep ${PORT}"}
  big: {cmd: "sleep ${PORT}"}
  loner: {cmd: "sleep ${PORT}"}
routing:
  router:
    use: matrix
    settings:
      matrix:
        vars: {g: gemma, q: qwen, v: voice}
        evict_costs: {v: 50}
        sets:
          standard: "(g | q) & v"
          search: "q & rerank & v"
          full: big
"""


def test_matrix_router_runs_allowed_sets_together_and_evicts_the_cheapest():
    harness = SchedulerHarness(MATRIX)
    harness.run("gemma").release()
    harness.run("voice").release()
    assert harness.running() == ["gemma", "voice"]  # one set allows both
    harness.run("qwen").release()
    assert harness.running() == ["qwen", "voice"]  # gemma goes, the costly voice stays
    harness.run("rerank").release()
    assert harness.running() == ["qwen", "rerank", "voice"]
    harness.run("big").release()
    assert harness.running() == ["big"]  # a set of its own: everything else goes
    harness.run("loner").release()
    assert harness.running() == ["loner"]  # in no set: runs alone
    assert "matrix: <loner> set=(alone) evict=['big']" in harness.logs.proxy_monitor.history().decode()


def test_priority_serves_higher_first_then_in_arrival_order():
    harness = SchedulerHarness(
        CONFIG.replace("groups:", "routing:\n  scheduler:\n    settings:\n      fifo:\n        priority: {c: 10, b: 5}\ngroups:")
    )
    lease = harness.run("a")
    waiters = [(model, harness.request(model)) for model in ("solo", "b", "solo", "c")]
    harness.settle()
    rounds = []
    lease.release()
    while len(sum(rounds, [])) < len(waiters):
        harness.settle()
        seen = {id(outcome) for outcome in sum(rounds, [])}
        admitted = [outcome for model, outcome in waiters if outcome and id(outcome) not in seen]
        assert admitted, "nothing was admitted"
        rounds.append(admitted)
        for outcome in admitted:
            outcome[0].process.ensure_ready()
        harness.settle()
        for outcome in admitted:
            outcome[0].release()
    admitted_models = [sorted(outcome[0].process.id for outcome in batch) for batch in rounds]
    assert admitted_models == [["c"], ["b"], ["solo", "solo"]]  # one model at a time: they all conflict
