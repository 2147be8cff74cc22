"""What checking a cache entry's sha256 costs, side by side with what reading it is for.

    .venv/bin/python benchmarks/bench_checksum.py               # a ~100 MB entry, the README's
    .venv/bin/python benchmarks/bench_checksum.py --mb 1000 --repeats 5

One fp32 score entry of `--mb` MB (1024x1024 matrices) is stored, then timed, each `--repeats`
times, median reported:

  verify   ScoreCache.get in a fresh process state: every file hashed (what the first job of a
           run pays)
  memo     ScoreCache.get once the files are checked and settled (every later job)
  select   rb.select(entry, 0.01, "core") from the lazy entry: the work the read is for
  put      ScoreCache.put, which hashes each file once after writing it

and the ratios verify/select and verify/MB (s per GB).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from regionbench.common import cache
from regionbench.regions.kinds import select


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    n = max(1, args.mb // 4)  # 4 MB per fp32 1024x1024 matrix
    scores = {"aa": {f"model.layers.{i}.w": torch.rand(1024, 1024, generator=g) for i in range(n)}}
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, list[float]] = {"put": [], "verify": [], "memo": [], "select": []}
        for r in range(args.repeats):
            store, key = cache.ScoreCache(f"{tmp}/{r}"), cache.cache_key(repeat=r)
            runs["put"].append(timed(lambda store=store, key=key: store.put(key, scores)))
            time.sleep(cache.SETTLED_S + 0.5)  # as in a later job: the files have settled
            cache._VERIFIED.clear()
            runs["verify"].append(timed(lambda store=store, key=key: store.get(key)))
            runs["memo"].append(timed(lambda store=store, key=key: store.get(key)))
            entry = store.get(key)
            runs["select"].append(timed(lambda entry=entry: select(entry, 0.01, "core")))
        med = {k: statistics.median(v) for k, v in runs.items()}
    size = 4 * n
    print(f"entry: {size} MB fp32, {n} matrices, median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:<7} {v:8.3f} s")
    print(f"  verify / select = {med['verify'] / med['select']:.3f}")
    print(f"  verify = {med['verify'] / size * 1024:.2f} s per GB")


if __name__ == "__main__":
    main()
