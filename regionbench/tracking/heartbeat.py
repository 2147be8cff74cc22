"""The heartbeat of a running job: its run stamped every few seconds, and its sweep watched.

with Heartbeat(client, run_id, interval_s=60, parent_run_id=parent) as beat:
    ...                  # beat.reason says why the job was stopped, if it was
"""

from __future__ import annotations

import logging
import time
from typing import Any

from regionbench.tracking import liveness
from regionbench.tracking.stopping import stop_main

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that stamps `regionbench.heartbeat` (epoch seconds) on a run every
    `interval_s`, so a run whose node was lost is found stale from other hosts. With a parent
    run, it also watches the sweep: when the parent has ended (the sweep was killed) or its
    process is gone, it stops this job as SIGTERM would (the job's run ends KILLED), so no job
    outlives its sweep under any launcher. A tracking server that stops answering stops the job
    the same way (`client.StoreLost`: nothing more can be recorded), within one beat even when the
    job itself makes no MLflow call for an hour. `reason` says why it stopped the job.

    `client` is a `client.Tracker`'s watched MlflowClient, without `Uninterrupted`: a beat in
    flight must never hold back the signal that stops the main thread."""

    def __init__(self, client, run_id: str, interval_s: float, parent_run_id: str | None = None):
        import threading

        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self.parent_run_id = parent_run_id
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="regionbench-heartbeat", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        if self.interval_s and self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        from regionbench.tracking.client import StoreLost

        while not self._stop.wait(self.interval_s):
            try:
                self.client.set_tag(self.run_id, liveness.HEARTBEAT_TAG, str(int(time.time())))
                self.reason = self._sweep_gone()
            except StoreLost as err:  # said once by the entry point, in one line
                self.reason = str(err)
                log.debug("heartbeat of %s: %s", self.run_id, err)
            except Exception as err:  # noqa: BLE001 - a missed beat must never fail the job
                log.debug("heartbeat of %s failed: %s", self.run_id, err)
                continue
            if self.reason and not self._stop.is_set():
                if not self.reason.startswith(StoreLost.PREFIX):
                    log.error("stopping: %s", self.reason)
                stop_main(self.reason)
                return

    def _sweep_gone(self) -> str | None:
        if not self.parent_run_id:
            return None
        parent = self.client.get_run(self.parent_run_id)
        if parent.info.status != "RUNNING":
            return f"the sweep's parent run {self.parent_run_id} ended {parent.info.status}"
        if liveness.owner_alive(parent.data.tags) is False:
            return f"the sweep's process {parent.data.tags.get(liveness.PID_TAG)} is gone"
        return None
