"""Who owns a run, and whether that owner still lives.

Every MLflow run regionbench starts carries its owner: the host (name and boot id, so a reboot
is a different host), the process id and the process's start time (so a recycled pid is not
mistaken for the owner). A run still RUNNING whose owner is gone was left by a SIGKILL, an OOM
kill or a lost node; `tracking.Tracker.mark_stale` ends it FAILED with the reason.

    owner()                     # {'regionbench.host': 'node7/3f2a9c1e', 'regionbench.pid': ...}
    owner_alive(run.data.tags)  # True / False / None (another host: only a heartbeat can tell)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

HOST_TAG = "regionbench.host"
PID_TAG = "regionbench.pid"
START_TAG = "regionbench.pid_start"
HEARTBEAT_TAG = "regionbench.heartbeat"


@functools.cache
def host() -> str:
    """This machine: its name and, on Linux, the first 8 characters of its boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def started(pid: int) -> str | None:
    """When process `pid` started (a string, exact enough to tell a recycled pid), or None."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def owner(pid: int | None = None) -> dict[str, str]:
    """The tags naming this process (or `pid`) as a run's owner."""
    pid = os.getpid() if pid is None else pid
    return {HOST_TAG: host(), PID_TAG: str(pid), START_TAG: started(pid) or ""}


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by a run's owner tags is alive: None when that cannot be known
    from here (another host, or a run without owner tags)."""
    if tags.get(HOST_TAG) != host() or not tags.get(PID_TAG, "").isdigit():
        return None
    now = started(int(tags[PID_TAG]))
    return now is not None and (now == tags.get(START_TAG) or not tags.get(START_TAG))


def stop_descendants(grace_s: float = 30.0) -> int:
    """SIGTERM every process this one started (job processes of a launcher, and theirs), wait up
    to `grace_s` for them to end their runs, then SIGKILL what is left; the count stopped.
    multiprocessing's resource trackers are left to clean up after the workers, as they do."""
    import psutil

    try:
        procs = [p for p in psutil.Process().children(recursive=True) if not _tracker_process(p)]
    except psutil.Error:
        return 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        log.warning("process %d did not stop in %.0f s: killed", proc.pid, grace_s)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def _tracker_process(proc) -> bool:
    import psutil

    try:
        return "resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False
