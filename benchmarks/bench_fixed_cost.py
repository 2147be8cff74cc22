"""A job's fixed cost: CPU seconds of `python -m regionbench --help` and of one more job in a warm
sweep, for this checkout against a baseline commit, measured side by side (issue 27, item 4).

    .venv/bin/python benchmarks/bench_fixed_cost.py --baseline c4c8d9b
    .venv/bin/python benchmarks/bench_fixed_cost.py --baseline c4c8d9b --repeat 5 --jobs 8

CPU time (user + system of the child processes, from `resource.getrusage`, one thread each), not
wall time: the machine is shared, and what a job costs is what it computes. Each measurement runs in a fresh
folder (its own MLflow store) with one shared, pre-warmed cache, so the sandbox-test model, its
importance scores and its baseline evaluation are hits in both checkouts:

  help       python -m regionbench --help
  first      python -m regionbench -m ratio=0.01 +debug=default            (one job)
  warm job   (python -m regionbench -m ratio=r1..rJ +debug=default  -  first) / (J - 1)

The baseline is `git worktree add`-ed into a temporary folder and run with the same interpreter
(PYTHONPATH points at it). Medians over `--repeat` rounds, the two checkouts alternating.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_of(args: list[str], src: Path, cache: Path, work: Path) -> float:
    """User + system CPU seconds of `python -m regionbench ARGS` run from checkout `src`."""
    cwd = Path(tempfile.mkdtemp(dir=work))
    # One thread: CPU time is then the work, not a thread pool spin-waiting for a core that
    # another process holds (on a shared machine that doubled some jobs' CPU seconds).
    env = dict(os.environ, PYTHONPATH=str(src), REGIONBENCH_CACHE=str(cache), OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-m", "regionbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{src}: regionbench {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def sweep(n: int) -> list[str]:
    ratios = ",".join(f"{0.01 * (i + 1):.2f}" for i in range(n))
    return ["-m", f"ratio={ratios}", "+debug=default"]


def measure(src: Path, cache: Path, work: Path, jobs: int) -> dict[str, float]:
    first = cpu_of(sweep(1), src, cache, work)
    many = cpu_of(sweep(jobs), src, cache, work)
    return {
        "help": cpu_of(["--help"], src, cache, work),
        "first": first,
        "warm job": (many - first) / (jobs - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a commit to compare with, e.g. HEAD~5")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are shown)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs in the warm sweep (≥ 2)")
    args = parser.parse_args()
    if args.jobs < 2:
        raise SystemExit(f"--jobs {args.jobs}: the warm sweep needs at least 2 jobs")
    with tempfile.TemporaryDirectory(prefix="bench-fixed-") as tmp:
        work = Path(tmp)
        base = work / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), args.baseline],
            check=True,
        )
        try:
            cache = work / "cache"
            for src in (base, ROOT):  # warm: the model, scores and baseline for both checkouts
                cpu_of(sweep(2), src, cache, work)
            rounds = {"baseline": [], "this checkout": []}
            for _ in range(args.repeat):
                rounds["baseline"].append(measure(base, cache, work, args.jobs))
                rounds["this checkout"].append(measure(ROOT, cache, work, args.jobs))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    med = {
        who: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for who, runs in rounds.items()
    }
    print(f"CPU seconds, median of {args.repeat} (baseline {args.baseline}):")
    print(f"{'':12} {'baseline':>9} {'this':>9} {'ratio':>7}")
    for key in med["baseline"]:
        old, new = med["baseline"][key], med["this checkout"][key]
        print(f"{key:12} {old:9.2f} {new:9.2f} {new / old:7.2f}")


if __name__ == "__main__":
    main()
