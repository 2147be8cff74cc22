"""The GPU numbers in one command: a random-init LLaMA-7B-shaped model in bf16 on one GPU.

    python benchmarks/gpu.py                              # one H100/H200, about 5-8 minutes
    python benchmarks/gpu.py --device cpu --tiny          # the same code at tiny shapes (CI)
    python benchmarks/gpu.py --out gpu.json --peak-tflops 989

It prints one table and writes it as JSON (`--out`, default `gpu_bench.json`). Rows:

* `importance`: taylor importance tokens/s over `--batches` batches, against a bare
  forward+backward loop over the same batches (keeping `.grad`), and the achieved TFLOP/s
  (6 × parameters × tokens/s) against `--peak-tflops` (dense bf16: 989 on H100 and H200);
* `peak memory @ batch B`: the measured peak of one importance batch (CUDA's
  max_memory_allocated; on CPU the peak torch's profiler records, plus the weights) against the
  estimate the preflight uses (`regionbench/models/memory.py`); at 7B batch 16 does not fit an
  80 GB GPU (the estimate says 92 GB): the row then says OOM;
* `perplexity`: regionbench's evaluator against a plain forward over packed windows of the same
  text, per position the model reads (lm-eval's rolling windows read more positions than there
  are predicted tokens);
* `freeze step`: steps of `train_frozen` with a random 1% of the block matrices frozen, fp32
  masters for the bf16 weights: seconds per step, entries moved, and that the frozen entries are
  bit-identical; skipped when its estimate does not fit the device (LLaMA-2-7B: ≈ 124 GB);
* `selection`: a 3-ratio core selection per GB of cached scores, summed per ratio against the
  cached language total, on the device;
* `torchrun`: the importance batches under `torchrun --standalone --nproc_per_node=1` (NCCL on a
  GPU, gloo on CPU) against the same in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from regionbench.models.memory import size

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_perplexity, bench_selection

SHAPES = {  # LLaMA-2-7B, and a tiny model for CI
    "7b": {
        "hidden": 4096,
        "inter": 11008,
        "layers": 32,
        "heads": 32,
        "vocab": 32000,
        "seq": 512,
        "batch": 8,
        "memory_batches": (8, 16),
        "batches": 6,
        "ppl_docs": 48,
        "selection_layers": 2,
    },
    "tiny": {
        "hidden": 64,
        "inter": 172,
        "layers": 2,
        "heads": 4,
        "vocab": 256,
        "seq": 32,
        "batch": 2,
        "memory_batches": (2, 4),
        "batches": 3,
        "ppl_docs": 6,
        "selection_layers": 2,
    },
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def build(shape: dict, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["inter"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=max(shape["seq"], 256),
        tie_word_embeddings=False,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialised in bf16: no fp32 copy of 7B on the way
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def windows(shape: dict, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, shape["vocab"], (n * shape["batch"], shape["seq"]), generator=g)


def shape_of(model, shape: dict):
    from regionbench.models import memory
    from regionbench.models.scope import scoped_params

    scored = scoped_params(model)
    return memory.Shape(
        params=sum(p.numel() for p in model.parameters()),
        scored=sum(p.numel() for p in scored.values()),
        largest=max(p.numel() for p in scored.values()),
        hidden=shape["hidden"],
        layers=shape["layers"],
        inter=shape["inter"],
        heads=shape["heads"],
        kv=shape["hidden"],
        vocab=shape["vocab"],
        gated=True,
        eager=False,
        context=shape["seq"],
    )


def importance_rate(model, w: torch.Tensor, batch: int, device: str) -> float:
    """Tokens/s of the taylor importance pass over `w`."""
    from regionbench.importance import score_samples

    _, took = timed(
        lambda: score_samples(model, {"l0": w}, "taylor", batch_size=batch, progress=False), device
    )
    return w.numel() / took


def bench_importance(model, shape, device, args, rows) -> float:
    from regionbench.importance import iter_batches

    w = windows(shape, shape["batches"])
    importance_rate(model, w[: shape["batch"]], shape["batch"], device)  # warm-up

    def plain():
        for b in iter_batches(w, shape["batch"]):
            b = b.to(device)
            (model(input_ids=b, labels=b, use_cache=False).loss * len(b)).backward()
        model.zero_grad(set_to_none=True)

    _, took = timed(plain, device)
    plain_rate = w.numel() / took
    rate = importance_rate(model, w, shape["batch"], device)
    params = sum(p.numel() for p in model.parameters())
    tflops = 6 * params * rate / 1e12
    peak = args.peak_tflops
    rows.append(row("importance", rate, "tokens/s", plain_rate, "a bare forward+backward loop"))
    rows.append(
        row(
            "importance TFLOP/s",
            tflops,
            "TFLOP/s",
            peak,
            "the device's dense bf16 peak" if peak else "no peak given (--peak-tflops)",
        )
    )
    return rate


def peak_memory(model, w, batch, device) -> float:
    from regionbench.importance import score_samples

    def one():
        return score_samples(model, {"l0": w[:batch]}, "taylor", batch_size=batch, progress=False)

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        one()
        return float(torch.cuda.max_memory_allocated())
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        one()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof.export_memory_timeline(f"{tmp}/t.json", device="cpu")
        with open(f"{tmp}/t.json") as f:
            _, sizes = json.load(f)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + max(sum(s) for s in sizes)


def bench_memory(model, shape, device, rows) -> None:
    from regionbench.models import memory

    s = shape_of(model, shape)
    d = next(model.parameters()).element_size()
    for batch in shape["memory_batches"]:
        need = memory.importance_memory(s, batch, shape["seq"], d).total
        w = windows({**shape, "batch": batch}, 1)
        try:
            got = peak_memory(model, w, batch, device)
            rows.append(
                row(f"peak memory @ batch {batch}", got / 1e9, "GB", need / 1e9, "estimate")
            )
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            rows.append(row(f"peak memory @ batch {batch}", None, "GB", need / 1e9, "OOM"))


def bench_perplexity(model, shape, device, rows) -> None:
    from bench_perplexity import packed_windows, plain_forward, rolling_positions

    from regionbench.evaluation.perplexity import perplexity
    from regionbench.testing import char_tokenizer

    tok = char_tokenizer()
    g = torch.Generator().manual_seed(2)
    letters = "abcdefghijklmnopqrstuvwxyz"
    texts = {
        "l0": [
            " ".join(
                "".join(letters[i] for i in torch.randint(0, 26, (5,), generator=g).tolist())
                for _ in range(int(torch.randint(20, 3 * shape["seq"], (1,), generator=g)))
            )
            for _ in range(shape["ppl_docs"])
        ]
    }
    seq, batch = shape["seq"], 2 * shape["batch"]
    perplexity(model, tok, texts, max_length=seq, batch_size=batch, progress=False)  # warm-up
    _, took = timed(
        lambda: perplexity(model, tok, texts, max_length=seq, batch_size=batch, progress=False),
        device,
    )
    read, _ = rolling_positions(tok, texts, seq)
    packed = packed_windows(tok, texts, seq)
    _, plain_took = timed(lambda: plain_forward(model, packed, batch, device), device)
    rows.append(
        row(
            "perplexity",
            read / took,
            "positions/s",
            packed.numel() / plain_took,
            "a plain forward over packed windows of the same text",
        )
    )


def bench_freeze(model, shape, device, args, rows) -> None:
    from regionbench.interventions.sparse import freeze_bytes
    from regionbench.interventions.training import train_frozen
    from regionbench.models import memory
    from regionbench.models.scope import scoped_params
    from regionbench.testing import char_tokenizer

    s = shape_of(model, shape)
    d = next(model.parameters()).element_size()
    frozen_entries = int(0.01 * s.scored)
    need = memory.training_memory(s, 1, shape["seq"], d, freeze_bytes, frozen_entries).total
    have = torch.cuda.mem_get_info()[0] if device.startswith("cuda") else None
    if have is not None and need > have + torch.cuda.memory_reserved():
        rows.append(row("freeze step", None, "s/step", None, f"skipped: needs ≈ {size(need)}"))
        return
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=g) < 0.01 for n, p in scoped_params(model).items()}
    frozen = {
        n: p.detach()[m.to(p.device)].clone()
        for n, p in model.named_parameters()
        if (m := masks.get(n)) is not None
    }
    before = {n: p.detach().clone().cpu() for n, p in model.named_parameters()}
    text = " ".join("abcdefghij"[i % 10] * 3 for i in range(40 * shape["seq"]))
    steps = 3
    cfg = {
        "steps": steps,
        "batch_size": 1,
        "seq_len": shape["seq"],
        "eval_every": 0,
        "warmup_steps": 0,
        "lr": 1e-4,
        "target_langs": ["l0"],
    }
    out = train_frozen(model, char_tokenizer(), {"l0": [text] * 4}, masks, cfg, progress=False)
    moved = 0
    for n, p in model.named_parameters():
        moved += int((p.detach().cpu() != before[n]).sum())
        if n in frozen:
            assert torch.equal(p.detach()[masks[n].to(p.device)], frozen[n]), n
    note = (
        f"{moved} entries moved, the {frozen_entries} frozen bit-identical, "
        f"{out['master_params']:.0f} fp32 masters"
    )
    rows.append(row("freeze step", out["time_s"] / steps, "s/step", None, note))


def bench_selection(shape, device, rows) -> None:
    import bench_selection as sel

    from regionbench.common import cache

    langs = ["l0", "l1", "l2"]
    matrices = sel.shapes(shape["hidden"], shape["inter"], shape["selection_layers"])
    g = torch.Generator().manual_seed(4)
    scores = {lg: {n: torch.rand(s, generator=g) for n, s in matrices.items()} for lg in langs}
    gb = sum(t.numel() * 4 for d in scores.values() for t in d.values()) / 1e9
    ratios = [0.01, 0.03, 0.05]
    with tempfile.TemporaryDirectory() as tmp:
        store, key = cache.ScoreCache(f"{tmp}/importance"), cache.cache_key(bench="gpu")
        store.put(key, scores)
        del scores
        old, before = timed(lambda: sel.before(store, key, langs, ratios, device), device)
        new, after = timed(
            lambda: sel.after(store, key, langs, ratios, f"{tmp}/totals", device), device
        )
    same = all(torch.equal(a[n], b[n]) for a, b in zip(old, new, strict=True) for n in a)
    rows.append(
        row(
            "selection",
            after / gb,
            "s/GB",
            before / gb,
            f"summed per ratio; {size(gb * 1e9)} of scores, 3 ratios, masks identical: {same}",
        )
    )


def bench_torchrun(shape, args, rate, rows) -> None:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=1", __file__, "--worker"]
    cmd += ["--device", args.device, "--dtype", args.dtype] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        rows.append(row("torchrun world 1", None, "tokens/s", rate, f"failed: {tail[0][:120]}"))
        return
    found = json.loads(lines[-1])
    backend = found["backend"]
    rows.append(
        row("torchrun world 1", found["rate"], "tokens/s", rate, f"{backend}; in this process")
    )
    rows.append(
        row(
            "all-reduce host accs",
            found["reduce_host_s"] / found["gb"],
            "s/GB",
            found["reduce_device_s"] / found["gb"],
            f"{backend}: fp32 accumulators in host memory (staged in chunks under NCCL) vs on "
            f"the device; {size(found['gb'] * 1e9)}",
        )
    )


def worker(args) -> None:
    """One torchrun rank: the importance batches under a process group of one."""
    import torch.distributed as dist

    from regionbench.importance.distributed import init_from_env, rank_world

    os.environ.setdefault("WORLD_SIZE", "1")
    backend = "nccl" if args.device.startswith("cuda") else "gloo"
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    init_from_env()
    assert rank_world() == (0, 1)
    shape = SHAPES["tiny" if args.tiny else "7b"]
    model = build(shape, args.device, getattr(torch, args.dtype))
    w = windows(shape, shape["batches"])
    importance_rate(model, w[: shape["batch"]], shape["batch"], args.device)  # warm-up
    rate = importance_rate(model, w, shape["batch"], args.device)
    # the accumulators' all-reduce, on the device and from host memory (accumulate_device=cpu:
    # staged through the GPU in chunks under NCCL)
    from regionbench.importance.distributed import all_reduce_sum
    from regionbench.models.scope import scoped_params

    params = list(scoped_params(model).values())
    gb = sum(p.numel() for p in params) * 4 / 1e9

    def reduce(on_host: bool) -> float:
        accs = [
            (torch.zeros(p.shape, device="cpu" if on_host else p.device), p.device) for p in params
        ]
        return timed(lambda: all_reduce_sum(accs), args.device)[1]

    on_device, on_host = reduce(False), reduce(True)
    found = {"rate": rate, "backend": dist.get_backend(), "gb": gb}
    print(json.dumps(found | {"reduce_device_s": on_device, "reduce_host_s": on_host}), flush=True)
    dist.destroy_process_group()


def row(name, value, unit, reference, versus) -> dict:
    ratio = value / reference if value is not None and reference else None
    return {
        "measure": name,
        "value": value,
        "unit": unit,
        "reference": reference,
        "ratio": ratio,
        "versus": versus,
    }


def show(rows: list[dict]) -> str:
    def num(x):
        return "-" if x is None else f"{x:.4g}"

    lines = [f"{'measure':24} {'value':>11} {'unit':11} {'reference':>11} {'ratio':>7}  versus"]
    for r in rows:
        lines.append(
            f"{r['measure']:24} {num(r['value']):>11} {r['unit']:11} {num(r['reference']):>11} "
            f"{num(r['ratio']):>7}  {r['versus']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CI), not LLaMA-7B")
    parser.add_argument("--peak-tflops", type=float, default=None, help="default 989 on CUDA")
    parser.add_argument("--out", default="gpu_bench.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = 989.0
    shape = SHAPES["tiny" if args.tiny else "7b"]
    start = time.perf_counter()
    model = build(shape, args.device, getattr(torch, args.dtype))
    rows: list[dict] = []
    rate = bench_importance(model, shape, args.device, args, rows)
    bench_memory(model, shape, args.device, rows)
    bench_perplexity(model, shape, args.device, rows)
    bench_freeze(model, shape, args.device, args, rows)  # last use of the model: it trains
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    bench_selection(shape, args.device, rows)
    bench_torchrun(shape, args, rate, rows)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    header = (
        f"{'tiny' if args.tiny else 'LLaMA-7B-shaped'} random-init model, {args.dtype}, "
        f"{device}, {time.perf_counter() - start:.0f} s"
    )
    print(header)
    print(show(rows))
    Path(args.out).write_text(json.dumps({"setup": header, "rows": rows}, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
