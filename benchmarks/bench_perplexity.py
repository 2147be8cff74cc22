"""Perplexity throughput and values: regionbench's `perplexity` vs lm-eval's loglikelihood_rolling.

    .venv/bin/python benchmarks/bench_perplexity.py                    # sandbox-sized LLaMA, CPU
    .venv/bin/python benchmarks/bench_perplexity.py --device cuda --dtype bfloat16 --hidden 512
    .venv/bin/python benchmarks/bench_perplexity.py --repeat-docs 8    # long docs: many windows

Both score the same documents of the sandbox eval split (all pre-training languages) on the same
in-memory model: lm-eval through `HFLM(pretrained=model, tokenizer=tok).loglikelihood_rolling`,
the way its wikitext-style tasks do, and ours with windows of every document and language
batched together. The numbers that matter are the speed ratio (ours ÷ lm-eval, tokens/s, side by
side in one process, best of --trials) and the value agreement (largest relative difference of
bits-per-byte over languages), next to a plain packed forward over the same text (full windows,
no padding, tokenized beforehand: the limit). Absolute tokens/s on a shared CPU are pessimistic.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from regionbench import sandbox
from regionbench.evaluation.perplexity import perplexity
from regionbench.testing import tiny_tokenizer


def build_model(args, vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 8 / 3) // 8 * 8,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.max_length,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, trials: int):
    """(best seconds, result) over `trials` runs."""
    best, result = math.inf, None
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def lm_eval_nll(lm, texts: dict[str, list[str]]) -> dict[str, float]:
    """Summed NLL per language from one loglikelihood_rolling call over all documents."""
    from lm_eval.api.instance import Instance

    flat = [(lang, doc) for lang, docs in texts.items() for doc in docs]
    requests = [Instance("loglikelihood_rolling", {}, (doc,), i) for i, (_, doc) in enumerate(flat)]
    with contextlib.redirect_stderr(io.StringIO()):  # a progress bar per batch, whatever we ask
        lls = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    out = dict.fromkeys(texts, 0.0)
    for (lang, _), ll in zip(flat, lls, strict=True):
        out[lang] -= ll
    return out


def packed_windows(tok, texts: dict[str, list[str]], max_length: int) -> torch.Tensor:
    """Every document's tokens end to end, cut into full windows of `max_length`: the input of
    the limit (tokenized before the clock starts)."""
    ids = [i for docs in texts.values() for doc in docs for i in tok(doc)["input_ids"]]
    usable = len(ids) // max_length * max_length
    return torch.tensor(ids[:usable]).view(-1, max_length)


def plain_forward(model, windows: torch.Tensor, batch_size: int, device: str) -> float:
    """The limit: a bare batched forward and summed next-token loss over packed windows (no
    padding, no per-document bookkeeping, no tokenization)."""
    total = 0.0
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            ).item()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--docs", type=int, default=64, help="documents per language")
    p.add_argument("--repeat-docs", type=int, default=1, help="concatenate k eval docs into one")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--trials", type=int, default=2)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = sandbox.generate("eval", n_docs=args.docs * args.repeat_docs)
    k = args.repeat_docs
    texts = {lang: [" ".join(d[i : i + k]) for i in range(0, len(d), k)] for lang, d in raw.items()}
    tok = tiny_tokenizer(
        [doc for docs in texts.values() for doc in docs], args.vocab, full_alphabet=True
    )
    model = build_model(args, len(tok))

    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        batch_size=args.batch_size,
        max_length=args.max_length,
        add_bos_token=False,  # one BOS (the prefix token), as `perplexity` does
    )

    def ours():
        return perplexity(
            model,
            tok,
            texts,
            max_length=args.max_length,
            batch_size=args.batch_size,
            progress=False,
        )

    warm = {lang: docs[:2] for lang, docs in texts.items()}
    perplexity(model, tok, warm, max_length=args.max_length, progress=False)
    lm_eval_nll(lm, warm)
    t_ours, res = timed(ours, args.device, args.trials)
    t_ref, ref = timed(lambda: lm_eval_nll(lm, texts), args.device, args.trials)
    packed = packed_windows(tok, texts, args.max_length)
    t_plain, _ = timed(
        lambda: plain_forward(model, packed, args.batch_size, args.device), args.device, args.trials
    )

    tokens = sum(r.tokens for r in res.values())
    print(
        f"model: hidden {args.hidden}, layers {args.layers}, vocab {len(tok)}, "
        f"{args.device}/{args.dtype}, threads {torch.get_num_threads()}"
    )
    print(
        f"data: {len(texts)} languages x {args.docs} docs, {tokens} tokens, "
        f"max_length {args.max_length}, batch_size {args.batch_size}"
    )
    print(f"{'lang':6} {'tokens':>7} {'bytes':>7} {'ppl':>9} {'bpb':>7} {'rel.diff bpb':>13}")
    worst = 0.0
    for lang, r in res.items():
        ref_bpb = ref[lang] / (math.log(2) * r.bytes)
        diff = abs(r.bpb - ref_bpb) / ref_bpb
        worst = max(worst, diff)
        print(f"{lang:6} {r.tokens:7d} {r.bytes:7d} {r.ppl:9.3f} {r.bpb:7.4f} {diff:13.2e}")
    print(f"regionbench perplexity: {tokens / t_ours:10.0f} tokens/s ({t_ours:.2f} s)")
    print(f"lm-eval rolling:        {tokens / t_ref:10.0f} tokens/s ({t_ref:.2f} s)")
    plain_rate = packed.numel() / t_plain
    print(f"plain packed forward:   {plain_rate:10.0f} tokens/s ({t_plain:.2f} s, the limit)")
    print(f"ours / plain packed forward (tokens/s): {tokens / t_ours / plain_rate:.2f}")
    print(
        f"speed ratio (ours / lm-eval): {t_ref / t_ours:.2f}x; "
        f"largest relative bpb difference: {worst:.1e}"
    )


if __name__ == "__main__":
    main()
