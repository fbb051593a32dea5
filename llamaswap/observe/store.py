"""
The activity database: one row per metered request, in SQLite.

With C{store.path} the rows live in that file and survive restarts; the
file is checked, created and migrated before llamaswap starts listening, so
a corrupt or unwritable file stops it with a message instead of failing
requests later.  Without it they live in an in-memory database capped at
C{metricsMaxInMemory} rows.

The table is the newest llama-swap's, column for column, so a database it
wrote can be read here.  Our own schema version is kept in SQLite's
C{user_version}.

Everything here is synchronous and takes a C{sqlite3} connection;
L{Database} decides on which thread that runs: a file database on one
worker thread (through L{twisted.enterprise.adbapi}), an in-memory one on
the reactor's, where a query costs microseconds and a thread hop would cost
more.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from typing import Any, Callable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred

from llamaswap.observe.timestamps import rfc3339_second

# Each step moves the schema one version up; the index is the version it
# reaches.  A table left by the newest llama-swap already matches step 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS activity (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_created INTEGER NOT NULL,
        model_id TEXT NOT NULL,
        req_path TEXT NOT NULL DEFAULT '',
        resp_content_type TEXT NOT NULL DEFAULT '',
        resp_status_code INTEGER NOT NULL DEFAULT 0,
        cache_tokens INTEGER NOT NULL DEFAULT 0,
        draft_tokens INTEGER NOT NULL DEFAULT 0,
        draft_acc_tokens INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        prompt_per_second REAL NOT NULL DEFAULT 0,
        tokens_per_second REAL NOT NULL DEFAULT 0,
        duration_ms INTEGER NOT NULL DEFAULT 0,
        error_msg TEXT NOT NULL DEFAULT '',
        metadata_json TEXT NOT NULL DEFAULT ''
    );
    """,
)
# A file may hold years of activity; a thousand rows in memory are faster
# to scan than to keep indexed on every insert.
FILE_INDEXES = """
    CREATE INDEX IF NOT EXISTS idx_activity_created_id ON activity (ts_created DESC, id DESC);
    CREATE INDEX IF NOT EXISTS idx_activity_model_created_id ON activity (model_id, ts_created DESC, id DESC);
"""

COLUMNS = (
    "ts_created",
    "model_id",
    "req_path",
    "resp_content_type",
    "resp_status_code",
    "cache_tokens",
    "draft_tokens",
    "draft_acc_tokens",
    "input_tokens",
    "output_tokens",
    "prompt_per_second",
    "tokens_per_second",
    "duration_ms",
    "error_msg",
    "metadata_json",
)
_INSERT = f"INSERT INTO activity (id, {', '.join(COLUMNS)}) VALUES (?, {', '.join('?' * len(COLUMNS))})"
_SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM activity"

# The sort keys the API accepts (the UI's column ids) and their columns;
# nothing else from a query string reaches the SQL.
SORT_COLUMNS = {
    "id": "id",
    "time": "ts_created",
    "model": "model_id",
    "req_path": "req_path",
    "resp_status_code": "resp_status_code",
    "resp_content_type": "resp_content_type",
    "cached": "cache_tokens",
    "prompt": "input_tokens",
    "generated": "output_tokens",
    "drafted": "draft_tokens",
    "prompt_speed": "prompt_per_second",
    "gen_speed": "tokens_per_second",
    "duration": "duration_ms",
}


class StoreError(Exception):
    """
    The activity database cannot be used; the message says what to fix.
    """


@frozen
class ActivityQuery:
    """
    Which rows a listing wants: the filters are combined with AND, an empty
    one matches everything.
    """

    models: tuple[str, ...] = ()
    start: float | None = None  # seconds since the epoch, inclusive
    end: float | None = None
    min_id: int = 0
    max_id: int = 0
    limit: int = 25
    page: int = 1
    sort: str = "id"
    order: str = "desc"


def _where(query: ActivityQuery) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    values: list[Any] = []
    if query.models:
        conditions.append(f"model_id IN ({', '.join('?' * len(query.models))})")
        values.extend(query.models)
    if query.start is not None:
        conditions.append("ts_created >= ?")
        values.append(int(query.start))
    if query.end is not None:
        conditions.append("ts_created <= ?")
        values.append(int(query.end))
    if query.min_id > 0:
        conditions.append("id >= ?")
        values.append(query.min_id)
    if query.max_id > 0:
        conditions.append("id <= ?")
        values.append(query.max_id)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), values


def _row_document(row: Sequence[Any]) -> dict[str, Any]:
    """
    A row in the newest llama-swap's JSON shape (C{has_capture} is added by
    whoever knows the captures).
    """
    (
        row_id,
        created,
        model,
        path,
        content_type,
        status,
        cached,
        drafted,
        accepted,
        prompt,
        generated,
        prompt_speed,
        speed,
        duration,
        error,
        metadata,
    ) = row
    document: dict[str, Any] = {
        "id": row_id,
        "timestamp": rfc3339_second(created),
        "model": model,
        "req_path": path,
        "resp_content_type": content_type,
        "resp_status_code": status,
        "tokens": {
            "cache_tokens": cached,
            "draft_tokens": drafted,
            "draft_acc_tokens": accepted,
            "input_tokens": prompt,
            "output_tokens": generated,
            "prompt_per_second": prompt_speed,
            "tokens_per_second": speed,
        },
        "duration_ms": duration,
    }
    if error:
        document["error_msg"] = error
    if metadata:
        try:
            document["metadata"] = json.loads(metadata)
        except ValueError:
            pass
    return document


# ---------------------------------------------------------------- statements


def migrate(connection: sqlite3.Connection, indexes: bool = True) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"the database was written by a newer llamaswap (schema {version}, this one knows {len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        connection.executescript(script)
        connection.execute(f"PRAGMA user_version = {number}")
    if indexes:
        connection.executescript(FILE_INDEXES)
    connection.commit()


def insert(connection: sqlite3.Connection, rows: Sequence[tuple], keep: int = 0) -> None:
    """
    Add rows (their id, then values in L{COLUMNS} order); with C{keep},
    only the newest C{keep} rows stay.
    """
    if not rows:
        return
    connection.executemany(_INSERT, rows)
    if keep > 0:
        # ids only grow, so the newest rows are those above the last - keep
        connection.execute("DELETE FROM activity WHERE id <= ?", (rows[-1][0] - keep,))


def last_id(connection: sqlite3.Connection) -> int:
    """
    The highest id ever given (rows may have been deleted since).
    """
    given = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'activity'").fetchone()
    highest = connection.execute("SELECT COALESCE(MAX(id), 0) FROM activity").fetchone()[0]
    return max(highest, given[0] if given else 0)


def list_page(connection: sqlite3.Connection, query: ActivityQuery) -> dict[str, Any]:
    where, values = _where(query)
    total = connection.execute("SELECT COUNT(*) FROM activity" + where, values).fetchone()[0]
    column = SORT_COLUMNS.get(query.sort, "id")
    direction = "ASC" if query.order == "asc" else "DESC"
    order = f" ORDER BY id {direction}" if column == "id" else f" ORDER BY {column} {direction}, id {direction}"
    rows = connection.execute(
        _SELECT + where + order + " LIMIT ? OFFSET ?", [*values, query.limit, (query.page - 1) * query.limit]
    ).fetchall()
    return {
        "data": [_row_document(row) for row in rows],
        "page": query.page,
        "limit": query.limit,
        "total": total,
        "total_pages": math.ceil(total / query.limit) if total else 0,
    }


def stats(connection: sqlite3.Connection, model: str = "") -> dict[str, Any]:
    where, values = _where(ActivityQuery(models=(model,) if model else ()))
    count, prompt, generated, cached = connection.execute(
        "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),"
        " COALESCE(SUM(CASE WHEN cache_tokens > 0 THEN cache_tokens ELSE 0 END), 0) FROM activity" + where,
        values,
    ).fetchone()
    speeds = (" AND " if where else " WHERE ") + "(prompt_per_second > 0 OR tokens_per_second > 0)"
    prompt_speeds: list[float] = []
    generation_speeds: list[float] = []
    for prompt_speed, speed in connection.execute(
        "SELECT prompt_per_second, tokens_per_second FROM activity" + where + speeds, values
    ):
        if prompt_speed > 0:
            prompt_speeds.append(prompt_speed)
        if speed > 0:
            generation_speeds.append(speed)
    return {
        "total_requests": count,
        "total_input_tokens": prompt,
        "total_output_tokens": generated,
        "total_cache_tokens": cached,
        "prompt_histogram": histogram(prompt_speeds),
        "gen_histogram": histogram(generation_speeds),
    }


def _percentile(ordered: list[float], percent: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    rank = percent / 100 * (len(ordered) - 1)
    lower, upper = math.floor(rank), math.ceil(rank)
    return ordered[lower] + (rank - lower) * (ordered[upper] - ordered[lower])


def histogram(values: list[float]) -> dict[str, Any] | None:
    """
    Equal-width bins (Sturges' rule, 5 to 20 of them) and percentiles, as
    the newest llama-swap's statistics page draws them; C{None} without
    values.
    """
    if not values:
        return None
    ordered = sorted(values)
    low, high = ordered[0], ordered[-1]
    document = {
        "min": low,
        "max": high,
        "p50": _percentile(ordered, 50),
        "p95": _percentile(ordered, 95),
        "p99": _percentile(ordered, 99),
    }
    if low == high:
        return {"bins": [len(ordered)], "binSize": 0, **document}
    count = min(20, max(5, math.ceil(math.log2(len(ordered))) + 1))
    size = (high - low) / count
    bins = [0] * count
    for value in ordered:
        bins[min(int((value - low) // size), count - 1)] += 1
    return {"bins": bins, "binSize": size, **document}


# ---------------------------------------------------------------- opening


def check_path(path: str) -> None:
    """
    Refuse a path that cannot become a writable database file.
    """
    if os.path.isdir(path):
        raise StoreError(f"store.path: {path} is a directory, not a file")
    if os.path.exists(path):
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"store.path: {path} is not writable by this user")
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(f"store.path: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise StoreError(f"store.path: directory {directory} is not writable by this user")


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    if path != ":memory:":
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to write-ahead logging (got {mode})")
        connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def prepare(path: str) -> int:
    """
    Check, create and migrate the database file now, before anything is
    served (blocking is fine: the reactor is not running yet); return the
    highest id it holds.
    """
    check_path(path)
    try:
        connection = _connect(path)
        try:
            if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            migrate(connection)
            return last_id(connection)
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise StoreError(
            f"store.path: {path} cannot be used as an activity database ({error}); "
            "move it away to start with an empty one"
        ) from None


class Database:
    """
    Runs the statements above for the Twisted side: C{run(f, *args)}
    returns a Deferred of C{f(connection, *args)}, committed if it
    succeeded and rolled back if not.
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self.in_memory = not path
        if self.in_memory:
            self._connection = _connect(":memory:")
            migrate(self._connection, indexes=False)
            self._pool = None
            self.last_id = 0
        else:
            from twisted.enterprise import adbapi

            self.last_id = prepare(path)
            # One connection on one thread: SQLite takes one writer anyway,
            # and statements then run in the order they were asked for.
            self._pool = adbapi.ConnectionPool(
                "sqlite3",
                path,
                check_same_thread=False,
                cp_min=1,
                cp_max=1,
                cp_openfun=lambda connection: connection.execute("PRAGMA busy_timeout = 5000"),
            )

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        if self._pool is not None:
            return self._pool.runWithConnection(function, *args)
        return maybeDeferred(self._run_here, function, *args)

    def _run_here(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            result = function(self._connection, *args)
        except BaseException:
            self._connection.rollback()
            raise
        self._connection.commit()
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        else:
            self._connection.close()
