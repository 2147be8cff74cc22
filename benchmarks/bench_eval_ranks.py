"""Evaluation across ranks: the wall time of perplexity and lm-eval at world size 1, 2, ... under
torchrun (gloo on CPU, NCCL on GPUs), and whether every world size gives one process's values.

    .venv/bin/python benchmarks/bench_eval_ranks.py                         # sandbox-test, 1 and 2
    .venv/bin/python benchmarks/bench_eval_ranks.py --model sandbox-m --docs 200 --world 1,2
    .venv/bin/python benchmarks/bench_eval_ranks.py --world 1,8 --device cuda   # 8 GPUs

Each world size is one `torchrun --standalone --nproc_per_node=N` launch of this script
(`--worker`): every rank loads the model and the sandbox's evaluation text (`--docs` documents
per pre-training language), runs one untimed round (imports, lm-eval's task loading), then
`--trials` timed rounds of `perplexity` (every document, rolling windows) and `run_lm_eval`
(`rb_ppl` and `sandbox_grammar`: rolling and log-likelihood requests), each between two barriers;
the best round counts. Rank 0 writes its times and values. The table gives each world size's
seconds, its speed-up over world size 1, and the largest relative difference of its values from
world size 1's (perplexity: every document's NLL; lm-eval: every number of its results). Each
rank runs `--threads` threads: on a CPU, world size × threads should not exceed the cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker(args) -> None:
    import torch
    import torch.distributed as dist

    from regionbench import sandbox
    from regionbench.data.sources import load_texts
    from regionbench.evaluation import task_files
    from regionbench.evaluation.harness import run_lm_eval
    from regionbench.evaluation.perplexity import perplexity
    from regionbench.importance.distributed import init_from_env
    from regionbench.models.loading import load_model

    torch.set_num_threads(args.threads)
    rank, world = init_from_env()
    model, tok = load_model(args.model, device=args.device, cache_dir=args.cache, progress=False)
    langs = list(sandbox.PRETRAIN_LANGS)
    texts = load_texts("sandbox", "eval", langs, args.docs)
    pairs = {lang: sandbox.minimal_pairs(lang, args.pairs) for lang in langs}
    folder = task_files.task_folder(ppl_texts=texts, grammar_pairs=pairs)

    def ppl():
        res = perplexity(model, tok, texts, batch_size=args.batch_size, progress=False)
        return {lang: list(r.doc_nll) for lang, r in res.items()}

    def lm_eval():
        res = run_lm_eval(
            model, tok, ["rb_ppl", "sandbox_grammar"], include_path=folder, batch_size=16
        )
        return None if res is None else json.loads(json.dumps(res["results"], default=str))

    out = {"world": world, "times": {}, "values": {}}
    for name, fn in (("perplexity", ppl), ("lm_eval", lm_eval)):
        best = math.inf
        for trial in range(args.trials + 1):
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            value = fn()
            if world > 1:
                dist.barrier()
            if trial:  # the first round loads and compiles what the others reuse
                best = min(best, time.perf_counter() - start)
        out["times"][name], out["values"][name] = best, value
    out["tokens"] = sum(
        len(ids) for d in texts.values() for ids in tok(d, add_special_tokens=False)["input_ids"]
    )
    if rank == 0:
        Path(args.out).write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def _worst(a, b) -> float:
    """The largest relative difference between the numbers of two equally shaped JSON values."""
    if isinstance(a, dict):
        return max((_worst(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list):
        return max((_worst(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    if isinstance(a, float) and isinstance(b, float) and not math.isnan(a):
        return abs(a - b) / max(abs(a), 1e-30)
    return 0.0 if a == b else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sandbox-test")
    parser.add_argument("--docs", type=int, default=100, help="evaluation documents per language")
    parser.add_argument("--pairs", type=int, default=100, help="grammar pairs per language")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--world", default="1,2", help="world sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="threads per rank")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache", default=None, help="the cache with the model (REGIONBENCH_CACHE)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)

    torchrun = Path(sys.executable).parent / "torchrun"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in [int(w) for w in args.world.split(",")]:
            out = Path(tmp) / f"world{world}.json"
            cmd = [str(torchrun), "--standalone", f"--nproc_per_node={world}", __file__]
            cmd += [*sys.argv[1:], "--worker", "--out", str(out)]
            env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
            subprocess.run(cmd, check=True, env=env)
            results[world] = json.loads(out.read_text())
    first = results[min(results)]
    print(
        f"\n{args.model}, {args.docs} documents x {len(first['values']['perplexity'])} languages "
        f"({first['tokens']} tokens), {args.pairs} grammar pairs per language; {args.threads} "
        f"thread(s) per rank, best of {args.trials}\n"
    )
    print(
        "| world | perplexity s | speed-up | lm-eval s | speed-up | max rel. diff ppl / lm-eval |"
    )
    print("|---|---|---|---|---|---|")
    for world, r in results.items():
        t, t0 = r["times"], first["times"]
        diff_ppl = _worst(first["values"]["perplexity"], r["values"]["perplexity"])
        diff_lm = _worst(first["values"]["lm_eval"], r["values"]["lm_eval"])
        print(
            f"| {world} | {t['perplexity']:.2f} | {t0['perplexity'] / t['perplexity']:.2f} | "
            f"{t['lm_eval']:.2f} | {t0['lm_eval'] / t['lm_eval']:.2f} | "
            f"{diff_ppl:.1e} / {diff_lm:.1e} |"
        )


if __name__ == "__main__":
    main()
