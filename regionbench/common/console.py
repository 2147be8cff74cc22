"""The console: progress and results on stdout, warnings and errors on stderr (as shells and
schedulers expect; `conf/hydra/job_logging/regionbench.yaml` routes the log records)."""

from __future__ import annotations

import logging


class BelowWarning(logging.Filter):
    """Lets DEBUG and INFO records through: the stdout handler's filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING
