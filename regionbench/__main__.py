"""`python -m regionbench [overrides]`: the Hydra entry point, a shim over `pipeline.run_job`.

python -m regionbench                                 # one job, default config
python -m regionbench -m ratio=0.01,0.03,0.05         # a sweep, one MLflow run per job
python -m regionbench --help                          # config groups and their options
"""

from __future__ import annotations

import os
from pathlib import Path

from regionbench.config import conf_dir


def job_name(overrides: list[str], swept: str) -> str:
    """A job is named by the overrides its sweep varies, else by all of its overrides."""
    keys = set(filter(None, swept.split(",")))
    chosen = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]
    return " ".join(chosen or overrides) or "default"


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from regionbench.pipeline import run_job
    from regionbench.tracking import SWEEP_KEYS_ENV

    hc = HydraConfig.get()
    name = job_name(list(hc.overrides.task), os.environ.get(SWEEP_KEYS_ENV, ""))
    num = hc.job.get("num", 0) or 0
    # The config groups the job chose (frozen_set=core-5, model=...): params `choice.<group>`.
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")}
    return run_job(cfg, name=name, job_num=num, output_dir=hc.runtime.output_dir, choices=choices)


def check_group_overrides(args: list[str], conf: Path) -> None:
    """Hydra's own error for `metric=taylr` is a page long; give one line naming the choices."""
    from regionbench.choices import check_choice

    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        folder = conf / key
        # hydra/... groups also get options from installed plugins (hydra/launcher=joblib)
        if not sep or "." in key or not folder.is_dir() or key.split("/")[0] == "hydra":
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in value.split(","):  # a sweep: metric=taylor,magnitude
            if option and not option.startswith(("glob(", "choice(", "range(")):
                check_choice(f"{key} option", option, options)


def main() -> None:
    import signal
    import sys

    import hydra

    from regionbench.config import register
    from regionbench.tracking import stop_once

    register()  # the typed schema conf/config.yaml builds on
    try:
        check_group_overrides(sys.argv[1:], conf_dir())
    except ValueError as err:
        sys.exit(f"error: {err}")

    from regionbench.scoring import distributed

    rank, world = distributed.init_from_env()  # under torchrun: rank 0 runs the app
    if rank > 0:
        from regionbench.pipeline import serve_importance

        serve_importance()  # the other ranks help with importance until rank 0 is done
        return

    # SIGTERM (`kill`, a scheduler's time limit) unwinds like Ctrl-C: the running job's MLflow run
    # and the sweep's parent run end KILLED instead of staying RUNNING forever.
    received = [signal.SIGINT]
    on_signal = stop_once(lambda signum: received.__setitem__(0, signum))  # then cleanup, once

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored (nohup, &)
        signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)()
    except KeyboardInterrupt:
        print(f"regionbench: interrupted ({signal.Signals(received[0]).name})", file=sys.stderr)
        sys.exit(128 + received[0])
    finally:
        distributed.release()


if __name__ == "__main__":
    main()
