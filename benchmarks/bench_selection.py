"""Selection time per GB of scores: a K-ratio sweep's regions the old way (every ratio reads and
sums every language's scores) against the language total summed once and cached.

    .venv/bin/python benchmarks/bench_selection.py                  # 6 languages, ~0.3 GB
    .venv/bin/python benchmarks/bench_selection.py --hidden 1024 --inter 2816 --layers 4
    .venv/bin/python benchmarks/bench_selection.py --device cuda    # picks on the GPU

One score entry of `--langs` languages (random fp32 scores of the block matrices of a LLaMA of
the given shape) is stored in a temporary score cache, as importance leaves it; then, each path
in a fresh process state (no file checked yet) and `--repeats` times (median), the `core` region
at every ratio of `--ratios`, as the jobs of a sweep build it:

  before   per ratio: the entry read from the cache (its sha256 checked once per process) and
           every matrix's language scores read, summed and thresholded, one matrix at a time
           on one thread (the code before the totals: `select` summed per ratio)
  after    the total summed once and stored (`regions.totals.cached_totals`: written, hashed),
           then per ratio the region selected from it (`select(..., totals=)`: one file read,
           matrices over `torch.get_num_threads()` worker threads, or on `--device`)
  warm     `after` with the total already cached (a second sweep over the same scores)

CPU time (all threads) is what the ratio is taken of (the machine is shared); wall time is shown
beside it. The masks of `before` and `after` are compared and must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from regionbench.common import cache
from regionbench.regions.kinds import select
from regionbench.regions.select import exact_k, topk_mask
from regionbench.regions.totals import cached_totals


def shapes(hidden: int, inter: int, layers: int) -> dict[str, tuple[int, int]]:
    out = {}
    for i in range(layers):
        for m in ("q", "k", "v", "o"):
            out[f"model.layers.{i}.self_attn.{m}_proj.weight"] = (hidden, hidden)
        out[f"model.layers.{i}.mlp.gate_proj.weight"] = (inter, hidden)
        out[f"model.layers.{i}.mlp.up_proj.weight"] = (inter, hidden)
        out[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, inter)
    return out


def before(store, key, langs, ratios, device) -> list[dict]:
    """The old path, per ratio: read the entry, then per matrix read, sum, threshold."""
    out = []
    for ratio in ratios:
        scores = store.get(key)
        masks = {}
        for name in scores[langs[0]]:
            per_lang = [scores[lg][name] for lg in langs]
            for s in per_lang:
                if torch.isnan(s).any():
                    raise ValueError(name)
            per_lang = [s.to(device) for s in per_lang]
            total = per_lang[0].float().clone()
            for s in per_lang[1:]:
                total += s.float()
            masks[name] = topk_mask(total, exact_k(ratio, total.numel()), name=name).cpu()
        out.append(masks)
    return out


def after(store, key, langs, ratios, root, device) -> list[dict]:
    out = []
    for ratio in ratios:
        scores = store.get(key)
        totals, _ = cached_totals(scores, langs, key, root)
        out.append(select(scores, ratio, "core", langs=langs, totals=totals, device=device).masks)
    return out


READ = [0]  # bytes of tensors read from cache entries


def _counting(original):
    def read(self, name):
        t = original(self, name)
        READ[0] += t.numel() * t.element_size()
        return t

    return read


def clocked(fn):
    """(result, CPU s, wall s, GB read from cache entries)."""
    READ[0] = 0
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.process_time() - cpu, time.perf_counter() - wall, READ[0] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--langs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--inter", type=int, default=1376)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--ratios", default="0.01,0.03,0.05")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    langs = [f"l{i}" for i in range(args.langs)]
    g = torch.Generator().manual_seed(0)
    matrices = shapes(args.hidden, args.inter, args.layers)
    scores = {lg: {n: torch.rand(s, generator=g) for n, s in matrices.items()} for lg in langs}
    gb = sum(t.numel() * 4 for d in scores.values() for t in d.values()) / 1e9
    cache.LazyTensors.__getitem__ = _counting(cache.LazyTensors.__getitem__)
    times: dict[str, list[tuple[float, float, float]]] = {"before": [], "after": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        store, key = cache.ScoreCache(f"{tmp}/importance"), cache.cache_key(bench="selection")
        store.put(key, scores)
        del scores
        time.sleep(
            cache.SETTLED_S + 0.5
        )  # settled: a later job's check is remembered, as in a sweep
        for r in range(args.repeats):
            root = f"{tmp}/totals-{r}"
            cache._VERIFIED.clear()  # a fresh process: nothing checked yet
            old, *took = clocked(lambda: before(store, key, langs, ratios, args.device))
            times["before"].append(took)
            cache._VERIFIED.clear()
            new, *took = clocked(
                lambda root=root: after(store, key, langs, ratios, root, args.device)
            )
            times["after"].append(took)
            cache._VERIFIED.clear()
            warm, *took = clocked(
                lambda root=root: after(store, key, langs, ratios, root, args.device)
            )
            times["warm"].append(took)
            for masks in (new, warm):
                for a, b in zip(old, masks, strict=True):
                    assert list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)
    med = {k: [statistics.median(t[i] for t in v) for i in range(3)] for k, v in times.items()}
    print(
        f"{args.langs} languages x {len(matrices)} matrices = {gb:.3f} GB of fp32 scores, "
        f"ratios {ratios}, torch threads {torch.get_num_threads()}, device {args.device}, "
        f"median of {args.repeats}; masks identical"
    )
    print(
        f"{'path':8} {'CPU s':>7} {'wall s':>7} {'CPU s/GB':>9} {'wall s/GB':>10} "
        f"{'GB read':>8} {'CPU vs before':>14}"
    )
    for k, (cpu, wall, read) in med.items():
        ratio = med["before"][0] / cpu if cpu else float("inf")
        print(
            f"{k:8} {cpu:7.2f} {wall:7.2f} {cpu / gb:9.2f} {wall / gb:10.2f} {read:8.3f} "
            f"{ratio:13.2f}x"
        )


if __name__ == "__main__":
    main()
