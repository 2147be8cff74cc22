"""Importance throughput vs a plain forward+backward loop over the same batches.

    .venv/bin/python benchmarks/bench_importance.py                 # sandbox-sized LLaMA, CPU
    .venv/bin/python benchmarks/bench_importance.py --device cuda --dtype bfloat16 --hidden 512

The number that matters is the ratio (importance tokens/s ÷ plain loop tokens/s), measured side
by side in one process: it shows what the fp32 accumulator hooks, the eval/requires_grad
bookkeeping and the tokenization cost over the bare gradient computation. Absolute tokens/s on a
shared CPU are pessimistic. Peak memory is measured on CUDA (max_memory_allocated); on CPU the
script prints the analytic sizes (accumulators vs .grad buffers) instead.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from regionbench.importance import compute_importance, importance_samples, iter_batches
from regionbench.models.scope import scoped_params
from regionbench.testing import char_tokenizer


def synthetic_texts(n_docs: int, langs: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    out = {}
    for i in range(langs):
        letters = "abcdefghijklmnopqrstuvwxyz"[i * 5 % 26 :] + "abcde"
        out[f"l{i}"] = [
            " ".join(
                "".join(rng.choice(letters[:8]) for _ in range(rng.randint(2, 7)))
                for _ in range(rng.randint(20, 60))
            )
            + "."
            for _ in range(n_docs)
        ]
    return out


def build_model(args) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_loop(model, batches, device, only=None) -> float:
    """The bare cost: forward + backward, gradients left to accumulate in .grad (for every
    parameter, or only for the parameters in `only`)."""
    flags = {p: p.requires_grad for p in model.parameters()}
    if only is not None:
        keep = {id(p) for p in only}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        b = b.to(device)
        model(input_ids=b, labels=b, use_cache=False).loss.backward()
    sync(device)
    dt = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    for p, flag in flags.items():
        p.requires_grad_(flag)
    return dt


def peak(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--docs", type=int, default=30, help="documents per language")
    ap.add_argument("--langs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="best of N")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--accumulate-device", default=None)
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense peak for --dtype (H100 SXM bf16: 989) to report the share reached",
    )
    args = ap.parse_args()

    model, tok = build_model(args), char_tokenizer()
    texts = synthetic_texts(args.docs, args.langs)
    windows = importance_samples(tok, texts, args.seq_len)  # as many samples for every language
    batches = [b for w in windows.values() for b in iter_batches(w, args.batch_size)]
    tokens = sum(w.numel() for w in windows.values())
    params = scoped_params(model)
    n_scope = sum(p.numel() for p in params.values())
    n_all = sum(p.numel() for p in model.parameters())
    print(
        f"model: {n_all / 1e6:.2f}M params ({n_scope / 1e6:.2f}M in scope), {args.dtype} on "
        f"{args.device}; {args.langs} langs, {tokens} tokens, {len(batches)} batches of "
        f"{args.batch_size}x{args.seq_len}; torch threads {torch.get_num_threads()}"
    )

    plain_loop(model, batches[:1], args.device)  # warm-up (allocator, kernels)
    plain_t, scope_t, imp_t = [], [], []
    plain_peak = imp_peak = None
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all three
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        plain_t.append(plain_loop(model, batches, args.device))
        plain_peak = peak(args.device)
        scope_t.append(plain_loop(model, batches, args.device, only=params.values()))
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(args.device)
        t0 = time.perf_counter()
        scores = compute_importance(
            model,
            tok,
            texts,
            "taylor",
            seq_len=args.seq_len,
            samples=int(next(iter(windows.values())).shape[0]),
            batch_size=args.batch_size,
            progress=False,
            accumulate_device=args.accumulate_device,
        )
        sync(args.device)
        imp_t.append(time.perf_counter() - t0)
        imp_peak = peak(args.device)
        del scores

    p, q, i = min(plain_t), min(scope_t), min(imp_t)
    print(
        f"plain fwd+bwd, all grads   : {tokens / p:9.0f} tokens/s  ({p:.3f} s, best of "
        f"{args.repeats})"
    )
    print(f"plain fwd+bwd, scope grads : {tokens / q:9.0f} tokens/s  ({q:.3f} s)")
    print(
        f"importance (taylor)        : {tokens / i:9.0f} tokens/s  ({i:.3f} s, incl. tokenization)"
    )
    print(f"ratio importance/plain tokens/s: {p / i:.3f} (all grads), {q / i:.3f} (scope grads)")
    elem = torch.finfo(getattr(torch, args.dtype)).bits // 8
    print(
        f"memory: fp32 accumulators {4 * n_scope / 2**20:.1f} MiB (one language at a time, "
        f"on {args.accumulate_device or args.device}); plain loop .grad {elem * n_all / 2**20:.1f}"
        f" MiB; weights {elem * n_all / 2**20:.1f} MiB"
    )
    project(args, n_all, n_scope, tokens / i)
    if plain_peak is not None:
        print(f"peak CUDA memory: plain {plain_peak:.1f} MiB, importance {imp_peak:.1f} MiB")
    else:
        print("peak memory: CPU run, see analytic sizes above (CUDA runs report measured peaks)")


# The paper's setting (§2.2): LLaMA-2-7B, 10k samples of 512 tokens per language, 6 languages.
PAPER_PARAMS = 6.74e9
PAPER_SCOPE = 6.48e9  # the 32 blocks' linear matrices (what importance scores)
PAPER_TOKENS = 10_000 * 512 * 6


def project(args, n_all: int, n_scope: int, tokens_per_s: float) -> None:
    """Achieved FLOP/s (6 x params x tokens: forward + backward, attention scores not counted)
    and the paper's importance pass at that rate, with its memory by the same accounting as the
    measured run (weights in --dtype, one fp32 accumulator; activations come on top)."""
    flops = 6 * n_all * tokens_per_s
    line = f"achieved: {flops / 1e12:.3f} TFLOP/s (6 x params x tokens/s)"
    if args.peak_tflops:
        line += f", {flops / 1e12 / args.peak_tflops:.1%} of the {args.peak_tflops:g} TFLOP/s peak"
    print(line)
    total = 6 * PAPER_PARAMS * PAPER_TOKENS
    seconds = total / flops
    elem = torch.finfo(getattr(torch, args.dtype)).bits // 8
    print(
        f"paper setting (LLaMA-2-7B, {PAPER_TOKENS / 1e6:.1f}M tokens = 10k x 512 x 6 languages, "
        f"{total:.3g} FLOP) at this rate: {seconds / 3600:.3g} h on one such device, "
        f"{seconds / 3600 / 8:.3g} h on 8 (one all-reduce of the accumulators per language); "
        f"memory: weights {elem * PAPER_PARAMS / 1e9:.1f} GB ({args.dtype}) + fp32 accumulator "
        f"{4 * PAPER_SCOPE / 1e9:.1f} GB + one batch's activations"
    )


if __name__ == "__main__":
    main()
