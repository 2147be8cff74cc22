"""`python -m regionbench [overrides]`: the Hydra entry point, a shim over `pipeline.run_job`.

python -m regionbench                                 # one job, default config
python -m regionbench -m ratio=0.01,0.03,0.05         # a sweep, one MLflow run per job
python -m regionbench --help                          # config groups and their options
"""

from __future__ import annotations

import os
import sys

from regionbench.config import conf_dir
from regionbench.preflight import check_command_line


def job_name(overrides: list[str], swept: str) -> str:
    """A job is named by the overrides its sweep varies, else by all of its overrides."""
    keys = set(filter(None, swept.split(",")))
    chosen = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]
    return " ".join(chosen or overrides) or "default"


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from regionbench.pipeline import run_job
    from regionbench.tracking.client import SWEEP_KEYS_ENV

    hc = HydraConfig.get()
    name = job_name(list(hc.overrides.task), os.environ.get(SWEEP_KEYS_ENV, ""))
    num = hc.job.get("num", 0) or 0
    # The config groups the job chose (frozen_set=core-5, model=...): params `choice.<group>`.
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    try:
        result = run_job(
            cfg, name=name, job_num=num, output_dir=hc.runtime.output_dir, choices=choices
        )
    except Exception as err:  # noqa: BLE001 - never a silent exit 1 (see below)
        result = {"status": "FAILED", "run_id": None, "name": name, "error": _first_line(err)}
        # The callback's exit comes before Hydra could print this, so say it here.
        print(f"error: job {name!r} failed: {result['error']}", file=sys.stderr)
    return result


def _first_line(err: Exception) -> str:
    message = (str(err).strip().splitlines() or [""])[0]
    return message if isinstance(err, ValueError) else f"{type(err).__name__}: {message}"


def main() -> None:
    import signal

    import hydra

    from regionbench.config import LAUNCH_ENV, register
    from regionbench.tracking.client import lost_store
    from regionbench.tracking.stopping import stop_once, stop_reason

    register()  # the typed schema conf/config.yaml builds on
    from omegaconf import OmegaConf

    from regionbench.preflight import help_text

    OmegaConf.register_new_resolver("rb_help", help_text, replace=True)  # --help's template
    check_command_line(sys.argv[1:])
    os.environ[LAUNCH_ENV] = str(os.getpid())  # this launch's output folders: ${rb_launch:}

    distributed = None  # torch is imported only under torchrun (--help stays light)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from regionbench.importance import distributed

        distributed.init_from_env()
    if distributed is not None and distributed.rank_world()[0] > 0:
        from regionbench.pipeline import serve_importance

        serve_importance()  # the other ranks help with importance until rank 0 is done
        return

    # SIGTERM (`kill`, a scheduler's time limit) unwinds like Ctrl-C: the running job's MLflow run
    # and the sweep's parent run end KILLED instead of staying RUNNING forever.
    received = [signal.SIGINT, False]  # the first signal, and whether a user sent it

    def first(signum: int) -> None:
        received[:] = [signum, stop_reason() is None]  # else this process stopped itself

    on_signal = stop_once(first)  # then cleanup, once

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (nohup, &)
        signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)()
    except KeyboardInterrupt:
        lost = lost_store()  # the tracking server went away mid-sweep: say so, once
        if lost:
            print(f"error: {lost}", file=sys.stderr)
            if not received[1]:
                sys.exit(1)
        print(f"regionbench: interrupted ({signal.Signals(received[0]).name})", file=sys.stderr)
        sys.exit(128 + received[0])
    finally:
        if distributed is not None:
            distributed.release()


if __name__ == "__main__":
    main()
