"""The MLflow store itself: a SQLite file probed before MLflow opens it and created atomically
(a full disk cannot leave a half-made store), a tracking server asked for /health, and the two
faults every caller tells apart: `StoreError` (cannot be opened: one line naming the URI) and
`StoreLost` (a server that stopped answering mid-sweep, which stops the sweep). `client.Tracker`
uses them; nothing else imports this module's private helpers."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("regionbench.tracking.client")


@contextlib.contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """One process at a time opens a SQLite store (its first opening creates and migrates the
    schema; sweeps started together on a fresh store would otherwise race and lose runs) and
    creates an experiment. Other stores handle concurrency themselves."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


# What MLflow says about a SQLite file whose schema was left part-way (its migrations stopped).
HALF_MADE = re.compile(r"already exists|out-of-date database schema|no such table|locate revision")
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def probe_sqlite(uri: str, db: Path) -> None:
    """A SQLite store that exists opens as a database, or this is a `StoreError` now: MLflow
    retries an unopenable file (a folder, garbage, no permission) for two minutes first."""
    import sqlite3

    if db.exists() and not db.is_file():
        raise StoreError(
            f"cannot use the MLflow store {uri}: {db} is a folder, not a SQLite file: move it "
            "away, or point tracking.uri at a .db file (sqlite:////abs/path/mlflow.db)"
        )
    if not db.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as c:
            c.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as err:
        raise StoreError(
            f"cannot use the MLflow store {uri}: {err} ({db} is not a SQLite database MLflow "
            "can open: move it away, or point tracking.uri at another store)"
        ) from None


def create_sqlite(uri: str, db: Path) -> None:
    """Create a new SQLite store whole or not at all: MLflow builds its schema in a temporary file
    beside it, which is renamed into place once complete. Created in place, a store whose creation
    stopped part-way (a full disk) failed every later run with "table ... already exists"."""
    if db.exists() and db.stat().st_size:  # an empty file is no store yet: replaced
        return
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        store = SqlAlchemyStore(tmp_uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        # the engine is cached by URI for the process: close it, or it keeps the file open
        engines = getattr(SqlAlchemyStore, "_engine_map", {})
        (engines.pop(tmp_uri, None) or store.engine).dispose()
        os.replace(tmp, db)
    except Exception as err:  # noqa: BLE001 - a disk full, a folder we cannot write: one line
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if "full" in text or getattr(err, "errno", None) in FULL_DISK:
            raise StoreError(
                f"cannot create the MLflow store {uri}: no space left on device in {db.parent} "
                f"({text[:120]}); nothing was created: free space there, or point tracking.uri "
                "at another folder"
            ) from None
        raise StoreError(f"cannot create the MLflow store {uri}: {text}") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            with contextlib.suppress(OSError):
                leftover.unlink()


def holds_no_runs(db: Path) -> bool:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            return (
                "runs" not in tables or not con.execute("SELECT count(*) FROM runs").fetchone()[0]
            )
    except sqlite3.Error:
        return False


class StoreError(ValueError):
    """The MLflow store cannot be used (unreadable file, unknown scheme, server down, ...)."""


class StoreLost(KeyboardInterrupt):
    """The tracking server stopped answering in the middle of the work: nothing more can be
    recorded. It unwinds like Ctrl-C (no handler of a failed job swallows it, so the sweep stops
    instead of failing each of its jobs in turn); the entry point says it in one line. The runs it
    could not end stay RUNNING until the next contact with the store marks them stale."""

    PREFIX = "lost the MLflow tracking server"


_LOST: dict[str, str] = {}  # tracking server -> why it is known to be gone (this process)


def lost_store() -> str | None:
    """Why a tracking server this process used was lost, or None."""
    return next(iter(_LOST.values()), None)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class Watched:
    """An MlflowClient whose failed calls to a tracking server are followed by one /health
    request of our own: a server that is gone is a `StoreLost` naming it after the first failed
    call, and every later call of this process to it fails at once, without MLflow's retries."""

    def __init__(self, target: Any, uri: str):
        self._target, self._uri = target, uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr) or not is_http(self._uri):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            if self._uri in _LOST:
                raise StoreLost(_LOST[self._uri])
            try:
                return attr(*args, **kwargs)
            except Exception:
                self.check()
                raise

        return call

    def check(self) -> None:
        """`StoreLost` if the server does not answer /health within a few seconds."""
        if self._uri not in _LOST:
            try:
                check_reachable(self._uri, timeout_s=5.0)
                return
            except StoreError as err:
                reason = re.search(r"\(([^()]*)\)", str(err))
                why = reason.group(1) if reason else "no answer"
                _LOST[self._uri] = (
                    f"{StoreLost.PREFIX} {self._uri} mid-run ({why}): the sweep stopped; restart "
                    "the server and relaunch the command with resume=true (runs it could not end "
                    "are marked FAILED as stale then)"
                )
        raise StoreLost(_LOST[self._uri]) from None


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server answers its /health endpoint at once, or this is a `StoreError` now:
    MLflow's own client retries a refused connection for minutes before it gives up."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as err:
        reason = type(err).__name__
        if isinstance(err, requests.ConnectionError):
            reason = "connection refused or host unreachable"
        elif isinstance(err, requests.HTTPError):
            reason = f"HTTP {err.response.status_code} from /health"
        raise StoreError(
            f"cannot reach the MLflow tracking server {uri} ({reason}): start it "
            "(mlflow server --host ... --port ...) or fix tracking.uri"
        ) from None
