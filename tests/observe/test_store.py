"""
The activity database: created and migrated at start, refused with a clear
message when the file cannot be used, readable when the newest llama-swap
wrote it, and kept across restarts when it is a file (written on a worker
thread, never on the reactor's).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading

import pytest
import pytest_twisted

from llamaswap.observe import store
from llamaswap.observe.store import ActivityQuery, Database, StoreError


def values(model: str = "m", created: int = 1_700_000_000, output: int = 5, speed: float = 50.0, error: str = "") -> tuple:
    return (
        created,
        model,
        "/v1/chat/completions",
        "application/json",
        200,
        3,
        -1,
        -1,
        7,
        output,
        100.0,
        speed,
        80,
        error,
        "",
    )


def numbered(*rows: tuple, first: int = 1) -> list[tuple]:
    return [(number, *row) for number, row in enumerate(rows, start=first)]


def memory_connection() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    store.migrate(connection)
    return connection


def test_migrations_set_the_schema_version():
    connection = memory_connection()
    assert connection.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
    store.migrate(connection)  # again: nothing to do
    store.insert(connection, numbered(values(), values()))
    assert store.last_id(connection) == 2


def test_rows_in_the_newest_llama_swaps_shape():
    connection = memory_connection()
    store.insert(connection, numbered(values(error="boom"), values()))
    connection.execute("UPDATE activity SET metadata_json = ? WHERE id = 2", ('{"selector": "fast"}',))
    page = store.list_page(connection, ActivityQuery())
    second, first = page["data"]
    assert first == {
        "id": 1,
        "timestamp": "2023-11-14T22:13:20Z",
        "model": "m",
        "req_path": "/v1/chat/completions",
        "resp_content_type": "application/json",
        "resp_status_code": 200,
        "tokens": {
            "cache_tokens": 3,
            "draft_tokens": -1,
            "draft_acc_tokens": -1,
            "input_tokens": 7,
            "output_tokens": 5,
            "prompt_per_second": 100.0,
            "tokens_per_second": 50.0,
        },
        "duration_ms": 80,
        "error_msg": "boom",
    }
    assert second["metadata"] == {"selector": "fast"} and "error_msg" not in second


def test_pruning_keeps_the_newest():
    connection = memory_connection()
    store.insert(connection, numbered(*[values() for _ in range(10)]), keep=4)
    assert [entry["id"] for entry in store.list_page(connection, ActivityQuery())["data"]] == [10, 9, 8, 7]


def test_histogram_bins_and_percentiles():
    assert store.histogram([]) is None
    assert store.histogram([4.0, 4.0]) == {
        "bins": [2],
        "binSize": 0,
        "min": 4.0,
        "max": 4.0,
        "p50": 4.0,
        "p95": 4.0,
        "p99": 4.0,
    }
    result = store.histogram([float(value) for value in range(1, 101)])
    assert len(result["bins"]) == 8 and sum(result["bins"]) == 100  # ceil(log2 100) + 1
    assert result["p50"] == 50.5 and round(result["p95"], 2) == 95.05
    many = store.histogram([float(value) for value in range(10**6 // 1000)])
    assert len(many["bins"]) == 11


def test_stats_count_only_reported_speeds():
    connection = memory_connection()
    store.insert(
        connection,
        numbered(values(speed=10.0), values(speed=30.0), values(speed=0.0, output=0), values("x", speed=99.0)),
    )
    stats = store.stats(connection, "m")
    assert (stats["total_requests"], stats["total_output_tokens"], stats["total_cache_tokens"]) == (3, 10, 9)
    assert stats["gen_histogram"]["min"] == 10.0 and stats["gen_histogram"]["max"] == 30.0
    assert sum(stats["gen_histogram"]["bins"]) == 2


# ---------------------------------------------------------------- the file


def test_a_directory_a_missing_directory_and_a_corrupt_file_are_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory, not a file"):
        store.prepare(str(tmp_path))
    with pytest.raises(StoreError, match="does not exist"):
        store.prepare(str(tmp_path / "missing" / "activity.db"))
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database " * 200)
    with pytest.raises(StoreError, match=r"corrupt\.db cannot be used as an activity database .*move it away"):
        store.prepare(str(corrupt))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_file_is_refused(tmp_path):
    path = tmp_path / "activity.db"
    store.prepare(str(path))
    path.chmod(0o400)
    with pytest.raises(StoreError, match="is not writable"):
        store.prepare(str(path))


def test_a_database_from_a_newer_llamaswap_is_refused(tmp_path):
    path = tmp_path / "activity.db"
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="newer llamaswap"):
        store.prepare(str(path))


def test_a_database_written_by_the_newest_llama_swap_is_read(tmp_path):
    path = tmp_path / "llama-swap.sqlite"
    connection = sqlite3.connect(path)
    connection.executescript(store.MIGRATIONS[0])  # its goose migration creates the same table
    connection.execute("CREATE TABLE goose_db_version (id INTEGER PRIMARY KEY, version_id INTEGER, is_applied INTEGER)")
    connection.execute(f"INSERT INTO activity ({', '.join(store.COLUMNS)}) VALUES ({', '.join('?' * 15)})", values("old"))
    connection.commit()
    connection.close()
    store.prepare(str(path))
    connection = sqlite3.connect(path)
    assert store.list_page(connection, ActivityQuery())["data"][0]["model"] == "old"


@pytest_twisted.inlineCallbacks
def test_a_file_database_is_used_off_the_reactor_thread_and_kept(tmp_path):
    path = str(tmp_path / "activity.db")
    database = Database(path)
    threads: list[threading.Thread] = []

    def insert(connection, rows):
        threads.append(threading.current_thread())
        return store.insert(connection, rows)

    try:
        assert database.last_id == 0
        yield database.run(insert, numbered(values(), values("other")))
        assert threads[0] is not threading.current_thread()
        with pytest.raises(sqlite3.OperationalError):
            yield database.run(lambda connection: connection.execute("SELECT nothing FROM nowhere"))
    finally:
        database.close()
    again = Database(path)
    try:
        assert again.last_id == 2
        page = yield again.run(store.list_page, ActivityQuery(models=("other",)))
        assert [entry["id"] for entry in page["data"]] == [2]
    finally:
        again.close()


@pytest_twisted.inlineCallbacks
def test_a_file_activity_log_writes_in_batches_and_lists_what_was_recorded(tmp_path):
    from twisted.internet import reactor

    from llamaswap.observe.activity import ActivityLog
    from llamaswap.observe.backlog import Backlog
    from llamaswap.observe.captures import Capture, Captures
    from tests.helpers import sleep

    log = ActivityLog(Database(str(tmp_path / "activity.db")), Captures(5), None, reactor, Backlog(reactor))
    try:
        big = Capture("/v1/chat/completions", (), b"x" * 100_000, None, None)
        ids = [log.record(values(), big if index == 0 else None, "m") for index in range(5)]
        assert ids == [1, 2, 3, 4, 5]
        page = yield log.page(ActivityQuery())  # waits for the rows being written
        assert page["total"] == 5
        for _ in range(100):  # the large capture is compressed on a thread
            if log.captures.has(1):
                break
            yield sleep(0.01)
        assert json.loads(log.capture(1))["req_body"] == base64.b64encode(b"x" * 100_000).decode()
        assert log.captures.used < 10_000 and log.captures.assembling == 0
    finally:
        yield log.close()
    again = Database(str(tmp_path / "activity.db"))
    try:
        assert again.last_id == 5
    finally:
        again.close()
