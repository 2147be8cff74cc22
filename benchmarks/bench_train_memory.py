"""Peak host memory of `train_region` against `freeze` (and full training) on a random-init LLaMA.

    .venv/bin/python benchmarks/bench_train_memory.py                        # ~0.54B params, bf16
    .venv/bin/python benchmarks/bench_train_memory.py --dtype float32 --ratios 0.01
    .venv/bin/python benchmarks/bench_train_memory.py --hidden 512 --layers 2 --inter 1376 --vocab 4096

Each measurement runs in a fresh process on the same model and text and reports its peak resident
memory (ru_maxrss), the memory it held before training (weights, the region's boolean masks, the
packed text) and their difference, the training's own cost, next to the formula of
`regionbench/interventions/sparse.py`:

* `freeze`: `train_frozen` with the region frozen (every other entry trains);
* `train_region`: `train_region` on the same region (only it trains);
* `full`: `train_frozen` with nothing frozen.

The region is a random `ratio` of every block matrix (the size matters, not which entries).
The number that matters is `train_region / freeze`, of the peaks and of the training's own cost.
Children run with glibc's mmap threshold fixed at 1 MiB, so that freed blocks go back to the
system and the peak is what the program holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("freeze", "train_region", "full")


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
        tie_word_embeddings=False,
    )
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # built in its dtype: no fp32 copy to free afterwards
    try:
        return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def _masks(model, ratio: float):
    import torch

    g = torch.Generator().manual_seed(1)
    return {
        name: torch.rand(p.shape, generator=g) < ratio
        for name, p in model.named_parameters()
        if "layers." in name and p.ndim >= 2
    }


def child(args) -> dict:
    """One measurement (`--child MODE`), in this process; prints a JSON line."""
    import random

    import torch

    from regionbench.config import InterventionConfig
    from regionbench.interventions.training import train_frozen, train_region
    from regionbench.testing import char_tokenizer

    torch.set_num_threads(args.threads)
    model = _model(args)
    masks = _masks(model, args.ratio) if args.child != "full" else None
    rng = random.Random(0)
    docs = [" ".join("".join(rng.choices("abcdefghij", k=5)) for _ in range(40)) for _ in range(32)]
    cfg = InterventionConfig(
        name="train_region" if args.child == "train_region" else "freeze",
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        warmup_steps=0,
        eval_every=0,
        lr=1e-4,
    )
    start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train = train_region if args.child == "train_region" else train_frozen
    t0 = time.perf_counter()
    summary = train(model, char_tokenizer(), {"xx": docs}, masks, cfg, progress=False)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in model.parameters())
    region = sum(int(m.sum()) for m in masks.values()) if masks else 0
    largest = max(
        (p.numel() for n, p in model.named_parameters() if masks and n in masks), default=0
    )
    return {
        "peak_mb": peak_kb / 1024,
        "start_mb": start_kb / 1024,
        "params": params,
        "region": region,
        "largest_region_param": largest,
        "bytes": next(model.parameters()).element_size(),
        "seconds_per_step": seconds / args.steps,
        "optimizer_state": summary["optimizer_state"],
        "master_params": summary["master_params"],
    }


def predicted_mb(mode: str, m: dict) -> float:
    """The training's own memory by the formula (sparse.py), activations left out."""
    s, w, r = m["bytes"], m["params"], m["region"]
    if mode == "train_region":
        return (24 * r + m["largest_region_param"] * s) / 2**20
    trainable = w - r
    per_trainable = 12 + 4 * (s < 4)
    return (per_trainable * trainable + (8 + s) * r) / 2**20


def measure(args, mode: str) -> dict:
    argv = [sys.executable, __file__, "--child", mode]
    for key in ("hidden", "layers", "inter", "vocab", "seq_len", "batch_size", "threads"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    argv += ["--steps", str(args.steps), "--ratio", str(args.ratio), "--dtype", args.dtype]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--inter", type=int, default=5504)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--ratios", default="0.01,0.05", help="region sizes (fraction per matrix)")
    ap.add_argument("--child", default=None, choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.01, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return

    full = measure(args, "full")
    print(
        f"random-init LLaMA: hidden {args.hidden}, {args.layers} layers, inter {args.inter}, "
        f"vocab {args.vocab}: {full['params'] / 1e9:.3f}B parameters in {args.dtype}; "
        f"{args.steps} AdamW steps of {args.batch_size} x {args.seq_len} tokens; peak resident "
        "memory of a fresh process (MALLOC_MMAP_THRESHOLD_=1 MiB)\n"
    )
    print("| mode | region | peak MB | before training MB | training MB | formula MB | s/step |")
    print("|---|---|---|---|---|---|---|")

    def row(mode, ratio, m):
        own = m["peak_mb"] - m["start_mb"]
        print(
            f"| {mode} | {ratio} | {m['peak_mb']:.0f} | {m['start_mb']:.0f} | {own:.0f} | "
            f"{predicted_mb(mode, m):.0f} | {m['seconds_per_step']:.1f} |"
        )

    row("full", "-", full)
    ratios = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        args.ratio = ratio
        frozen, trained = measure(args, "freeze"), measure(args, "train_region")
        row("freeze", f"{ratio:g}", frozen)
        row("train_region", f"{ratio:g}", trained)
        ratios.append((ratio, frozen, trained))
    print()
    for ratio, frozen, trained in ratios:
        own = lambda m: m["peak_mb"] - m["start_mb"]  # noqa: E731
        print(
            f"region {ratio:g}: train_region / freeze = {trained['peak_mb'] / frozen['peak_mb']:.3f} "
            f"of the peak, {own(trained) / own(frozen):.3f} of the training's own memory; "
            f"AdamW state entries {trained['optimizer_state']:.0f} vs {frozen['optimizer_state']:.0f}"
        )


if __name__ == "__main__":
    main()
