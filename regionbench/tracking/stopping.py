"""Stopping a job cleanly: SIGINT and SIGTERM unwind it like Ctrl-C, but never in the middle of
an MLflow call, so its run can always be ended KILLED.

    signal.signal(signal.SIGTERM, stop_once())     # python -m regionbench: the first signal stops
    with stoppable():                              # a launcher's job process, for one job
        ...
    client = Uninterrupted(MlflowClient(uri))      # its calls finish before an interrupt lands
    stop_main("lost the tracking server ...")      # from a thread: unwind the main one, and why

A KeyboardInterrupt raised in the middle of an SQLite commit leaves the store locked for the rest
of the process, so the KILLED status could never be written. `interrupt_handler` raises
KeyboardInterrupt at once, except during an MLflow call, where the interrupt waits until the call
returns.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

# A KeyboardInterrupt raised in the middle of an SQLite commit leaves the store locked for the
# rest of the process, so the KILLED status could never be written.  `python -m regionbench`
# installs `interrupt_handler` for SIGINT and SIGTERM; it raises KeyboardInterrupt at once, except
# during an MLflow call, where the interrupt waits until the call returns.
_interrupts = {"depth": 0, "pending": False}


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    _interrupts["depth"] += 1
    try:
        yield
    finally:
        _interrupts["depth"] -= 1
    if _interrupts["depth"] == 0 and _interrupts["pending"]:
        _interrupts["pending"] = False
        raise KeyboardInterrupt


def interrupt_handler(signum: int, frame: Any) -> None:
    if _interrupts["depth"]:
        _interrupts["pending"] = True
    else:
        raise KeyboardInterrupt


def stop_once(on_first: Callable[[int], Any] | None = None) -> Callable[[int, Any], None]:
    """A SIGINT/SIGTERM handler that unwinds the job like Ctrl-C on the first signal (after the
    MLflow call in progress, see `interrupt_handler`) and ignores the ones that follow, so a burst
    of signals cannot cut the cleanup that ends the runs KILLED."""
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if seen:
            log.warning("signal %d ignored: already stopping (SIGKILL forces it)", signum)
            return
        seen.append(signum)
        if on_first is not None:
            on_first(signum)
        interrupt_handler(signum, frame)

    handler.regionbench = True  # type: ignore[attr-defined]
    return handler


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """SIGTERM unwinds this job like Ctrl-C, so its run ends KILLED: in a launcher's job process
    (joblib, submitit: whose own handler ignores SIGTERM) for as long as the job runs. The main
    process of `python -m regionbench` has installed its own handler already."""
    import signal
    import threading

    current = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or getattr(
        current, "regionbench", False
    ):
        yield
        return
    signal.signal(signal.SIGTERM, stop_once())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, current)


_REASONS: list[str] = []  # why this process stopped itself (stop_main), first first


def stop_main(reason: str) -> None:
    """Unwind the main thread as SIGTERM would (its job's run ends KILLED), for `reason`: what a
    helper thread calls when the job must stop (its sweep ended, its tracking server is gone).
    The entry point says the first reason instead of "interrupted"."""
    import _thread
    import signal

    _REASONS.append(reason)
    _thread.interrupt_main(signal.SIGTERM)


def stop_reason() -> str | None:
    """The first reason this process stopped itself for, or None (a user's signal, or none)."""
    return _REASONS[0] if _REASONS else None


class Uninterrupted:
    """A proxy of an MlflowClient whose method calls are never cut by an interrupt."""

    def __init__(self, target: Any):
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            with deferred_interrupts():
                return attr(*args, **kwargs)

        return call
