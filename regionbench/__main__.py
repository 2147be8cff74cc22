"""`python -m regionbench [overrides]`: the Hydra entry point, a shim over `pipeline.run_job`.

    python -m regionbench                                 # one job, default config
    python -m regionbench -m ratio=0.01,0.03,0.05         # a sweep, one MLflow run per job
    python -m regionbench --help                          # config groups and their options
"""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """`regionbench/conf` inside an installed wheel, else `conf/` at the source checkout's root."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parent / "conf"


def task(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from regionbench.pipeline import run_job

    hc = HydraConfig.get()
    name = hc.job.override_dirname or "default"
    num = hc.job.get("num", 0) or 0
    return run_job(cfg, name=name, job_num=num, output_dir=hc.runtime.output_dir)


def main() -> None:
    import hydra

    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)()


if __name__ == "__main__":
    main()
