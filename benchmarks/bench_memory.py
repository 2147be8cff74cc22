"""Peak host memory of importance against the number of languages, and against the bare minimum.

    .venv/bin/python benchmarks/bench_memory.py                  # random-init LLaMA, ~110M params
    .venv/bin/python benchmarks/bench_memory.py --hidden 512 --layers 4 --langs 1,2

Each measurement runs in a fresh process and reports its peak resident memory (ru_maxrss) on the
same random-init LLaMA and the same token windows:

* `plain`: a bare forward + backward loop over one language's batches, keeping `.grad`: weights
  + one fp32 gradient per weight + one batch's activations, the floor any gradient-based score
  needs (the baseline of the ratios);
* `streamed`: what a job does: every language's scores go to the score cache as they finish
  (`ScoreCache.get_or_compute` over `iter_scores`), then the 5% core is selected from the cache,
  matrix by matrix;
* `in memory`: `score_samples` (every language's scores held at once), then the same selection.

The numbers that matter are `streamed / plain` (target <= 1.15) and how `streamed` moves from 1
to 6 languages (target: flat within 5%), next to `in memory`, which grows by one set of scores per
language. Children run with glibc's mmap threshold fixed at 1 MiB so that freed blocks go back to
the system and the peak is what the program holds; `--glibc-default` shows the allocator's own
figure (it keeps some freed blocks, so its peaks also count memory nobody references).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _model(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.inter,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        max_position_embeddings=args.seq_len,
    )
    return LlamaForCausalLM(config).eval()


def _windows(args, langs: int):
    import torch

    g = torch.Generator().manual_seed(1)
    shape = (args.samples, args.seq_len)
    return {f"l{i}": torch.randint(3, args.vocab, shape, generator=g) for i in range(langs)}


def child(args) -> dict:
    """One measurement (`--child MODE`), in this process; prints a JSON line."""
    import torch

    from regionbench.common.cache import ScoreCache
    from regionbench.importance import iter_batches, iter_scores, score_samples
    from regionbench.regions import kinds as regions

    torch.set_num_threads(args.threads)
    model = _model(args)
    windows = _windows(args, args.n_langs)
    start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if args.child == "plain":
        for p in model.parameters():
            p.requires_grad_(True)
        for batch in iter_batches(windows["l0"], args.batch_size):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()  # .grad accumulates: one fp32 buffer per weight
    elif args.child == "streamed":
        with tempfile.TemporaryDirectory() as tmp:
            cache = ScoreCache(tmp)

            def compute():
                return iter_scores(model, windows, "taylor", batch_size=args.batch_size)

            scores, _ = cache.get_or_compute("0" * 64, compute)
            regions.select(scores, 0.05, "core")
    else:
        scores = score_samples(model, windows, "taylor", batch_size=args.batch_size)
        regions.select(scores, 0.05, "core")
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "peak_mb": peak_kb / 1024,
        "start_mb": start_kb / 1024,
        "weights_mb": weights / 2**20,
        "seconds": seconds,
    }


def measure(args, mode: str, n_langs: int) -> dict:
    argv = [sys.executable, __file__, "--child", mode, "--n-langs", str(n_langs)]
    for key in (
        "hidden",
        "layers",
        "inter",
        "vocab",
        "samples",
        "seq_len",
        "batch_size",
        "threads",
    ):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = dict(os.environ)
    if not args.glibc_default:
        # glibc raises its mmap threshold after large frees, and then keeps freed 10-MB blocks
        # in the heap; a fixed threshold returns them, so the peak is what the program holds.
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--inter", type=int, default=2752)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=8, help="windows per language")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--langs", default="1,3,6")
    ap.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's dynamic mmap threshold (peaks then include freed memory it retains)",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-langs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return

    counts = [int(x) for x in args.langs.split(",")]
    plain = measure(args, "plain", 1)
    print(
        f"random-init LLaMA: hidden {args.hidden}, {args.layers} layers, weights "
        f"{plain['weights_mb']:.0f} MB fp32; {args.samples} windows x {args.seq_len} tokens per "
        f"language, batch {args.batch_size}; peak resident memory of a fresh process\n"
    )
    allocator = "glibc default" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=1 MiB"
    print(f"allocator: {allocator}")
    print(f"plain forward+backward (1 language's batches): {plain['peak_mb']:.0f} MB\n")
    print("| languages | streamed MB | / plain | in memory MB | / plain |")
    print("|---|---|---|---|---|")
    streamed = []
    for n in counts:
        s, m = measure(args, "streamed", n), measure(args, "memory", n)
        streamed.append(s["peak_mb"])
        print(
            f"| {n} | {s['peak_mb']:.0f} | {s['peak_mb'] / plain['peak_mb']:.3f} | "
            f"{m['peak_mb']:.0f} | {m['peak_mb'] / plain['peak_mb']:.3f} |"
        )
    print(
        f"\nstreamed, largest / smallest over {counts} languages: "
        f"{max(streamed) / min(streamed):.3f}"
    )


if __name__ == "__main__":
    main()
