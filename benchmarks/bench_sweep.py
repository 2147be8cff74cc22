"""A K-ratio sweep in one process vs K independent runs (DESIGN §5: importance does not depend on
the ratio, so a sweep scores it once and only thresholds K times).

    .venv/bin/python benchmarks/bench_sweep.py                          # the README's sweep
    .venv/bin/python benchmarks/bench_sweep.py --ratios 0.01 0.05 --args model=sandbox-s

Three ways to get the same K jobs, each timed end to end as the user runs them (the CLI in
subprocesses, cold score and baseline caches unless said otherwise; the sandbox model itself is
built once beforehand and shared, so no mode pays for it):

  sweep        python -m regionbench -m ratio=r1,...,rK      one process, cold caches
  independent  K x python -m regionbench ratio=ri            each with its own cold caches
  separate     K x python -m regionbench ratio=ri            sharing one disk cache (what a
                                                              cluster launcher's jobs get)

It prints the wall times, the ratios to `independent`, and checks that all three modes logged the
same `ppl_ratio/mean` per ratio (read back from their MLflow stores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from regionbench.common.cache import cache_root
from regionbench.sandbox import ensure_sandbox_model, sandbox_path


def run_cli(args: list[str], cwd: Path, cache: Path) -> float:
    env = dict(os.environ, REGIONBENCH_CACHE=str(cache))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "regionbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"regionbench {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def fresh_cache(root: Path, model: str, built: Path) -> Path:
    """An empty regionbench cache that already holds the built sandbox model."""
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    link = sandbox_path(model, cache)
    link.parent.mkdir(parents=True)
    link.symlink_to(built, target_is_directory=True)
    return cache


def logged(uri: str) -> dict[str, float]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("regionbench")
    return {
        r.data.params["ratio"]: r.data.metrics["ppl_ratio/mean"]
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if "ratio" in r.data.params and r.info.status == "FINISHED"
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ratios", nargs="+", default=["0.01", "0.03", "0.05"])
    ap.add_argument("--model", default="sandbox-m", help="a sandbox model")
    ap.add_argument("--args", nargs="*", default=[], help="more overrides for every job")
    args = ap.parse_args()

    built = ensure_sandbox_model(args.model, cache_root())
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        times, values = {}, {}

        def overrides(mode: str, *rest: str) -> list[str]:
            uri = f"sqlite:///{root}/{mode}.db"
            return [*rest, f"model={args.model}", f"tracking.uri={uri}", *args.args]

        cwd = root / "sweep"
        cwd.mkdir()
        times["sweep"] = run_cli(
            overrides("sweep", "-m", "ratio=" + ",".join(args.ratios)),
            cwd,
            fresh_cache(root, args.model, built),
        )
        print(f"sweep        {times['sweep']:7.1f} s", flush=True)

        times["independent"] = 0.0
        for ratio in args.ratios:
            times["independent"] += run_cli(
                overrides("independent", f"ratio={ratio}"),
                cwd,
                fresh_cache(root, args.model, built),
            )
        print(f"independent  {times['independent']:7.1f} s", flush=True)

        shared = fresh_cache(root, args.model, built)
        times["separate"] = sum(
            run_cli(overrides("separate", f"ratio={ratio}"), cwd, shared) for ratio in args.ratios
        )
        print(f"separate     {times['separate']:7.1f} s", flush=True)

        for mode in times:
            values[mode] = logged(f"sqlite:///{root}/{mode}.db")

    k = len(args.ratios)
    print(
        f"\n{k} ratios on {args.model}: "
        f"sweep {times['independent'] / times['sweep']:.2f}x faster than {k} independent runs, "
        f"separate processes with a shared cache {times['independent'] / times['separate']:.2f}x"
    )
    for ratio in args.ratios:
        got = {mode: values[mode].get(ratio) for mode in times}
        same = len(set(got.values())) == 1 and None not in got.values()
        print(
            f"ratio {ratio}: ppl_ratio/mean {got['sweep']:.6g} "
            f"({'identical in all modes' if same else f'DIFFERS: {got}'})"
        )
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
