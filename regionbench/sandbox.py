"""Sandbox models: a byte-level BPE tokenizer and small LLaMA models pre-trained on the sandbox corpus.

No model hub is reachable where regionbench is built and tested, so it trains its own models on
first use (seeded, CPU-friendly, a few minutes) and caches them as ordinary Hugging Face folders
that `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load like any other.

    folder = ensure_sandbox_model("sandbox-m", cache_dir)    # builds once, then returns at once

    python -m regionbench.sandbox build sandbox-m [--force] [--cache-dir DIR] [--seed N]
    python -m regionbench.sandbox sample                     # one sentence per language

A folder's name carries the recipe version, a hash of the recipe and the seed, so editing a recipe
(or the corpus) never loads a stale model.  Builds are atomic: a temporary folder beside the final
one, renamed at the end, under a file lock; a second process waits for the first and loads its
model, and an interrupted build leaves nothing that looks complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from regionbench.choices import check_choice
from regionbench.data import sandbox as corpus

log = logging.getLogger(__name__)

# Bump on any change to the build code that changes the weights (the recipes are hashed anyway).
RECIPE_VERSION = 1
# The training text is one fixed world; the model seed varies initialisation and data order only,
# so models of every size and seed share one tokenizer and their perplexities compare.
CORPUS_SEED = 0
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 as in LLaMA-style configs
METADATA = "regionbench_sandbox.json"  # written last: its presence marks a complete folder
BUILD_THREADS = 2  # fixed, so a rebuild on the same machine reproduces the weights bit for bit


@dataclass(frozen=True)
class SandboxRecipe:
    """Architecture and pre-training schedule of one sandbox model."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    steps: int
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 40
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    init_std: float = 0.02
    dropout: float = 0.0  # on every attention/MLP output during pre-training (GPT-2's resid_pdrop)
    vocab_size: int = 1024
    tokenizer_docs: int = 1000  # per language, the first train documents
    train_docs: int = 3000  # per language; more tokens than the schedule needs -> about one epoch


SANDBOX_MODELS: dict[str, SandboxRecipe] = {
    # Tiny, same code path: for tests (builds in seconds).
    "sandbox-test": SandboxRecipe(
        hidden=32,
        layers=2,
        heads=2,
        intermediate=64,
        steps=12,
        batch_size=4,
        seq_len=128,
        warmup=3,
        vocab_size=300,
        tokenizer_docs=40,
        train_docs=40,
    ),
    "sandbox-s": SandboxRecipe(hidden=64, layers=3, heads=4, intermediate=192, steps=500),
    "sandbox-m": SandboxRecipe(hidden=256, layers=2, heads=4, intermediate=512, steps=500),
    "sandbox-l": SandboxRecipe(
        hidden=384, layers=3, heads=6, intermediate=1024, steps=600, lr=2e-3
    ),
}


def _recipe(name: str) -> SandboxRecipe:
    return SANDBOX_MODELS[check_choice("sandbox model", name, SANDBOX_MODELS)]


def recipe_digest(name: str) -> str:
    """Short hash of everything that determines a build besides the seed."""
    ident = {
        "recipe": asdict(_recipe(name)),
        "recipe_version": RECIPE_VERSION,
        "corpus_version": corpus.CORPUS_VERSION,
        "corpus_seed": CORPUS_SEED,
        "langs": corpus.PRETRAIN_LANGS,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]


def sandbox_path(name: str, cache_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The Hugging Face folder of a sandbox model (it may not be built yet)."""
    folder = f"{name}-v{RECIPE_VERSION}-{recipe_digest(name)}-seed{seed}"
    return Path(cache_dir).expanduser() / "sandbox" / folder


def is_complete(folder: Path) -> bool:
    return (folder / METADATA).is_file() and (folder / "model.safetensors").is_file()


def ensure_sandbox_model(
    name: str,
    cache_dir: str | os.PathLike,
    *,
    force: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Return the folder of a sandbox model, building it first if it is missing (or `force`)."""
    from filelock import FileLock, Timeout

    final = sandbox_path(name, cache_dir, seed)
    if is_complete(final) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{final}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is building %s; waiting for it", final.name)
        lock.acquire()
    try:
        if is_complete(final) and not force:  # built by the process we waited for
            return final
        _remove_leftovers(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        try:
            build_sandbox_model(name, tmp, seed=seed, progress=progress)
            if final.exists():  # --force, or a folder damaged by hand: swap it out atomically
                old = final.parent / f".{final.name}.old-{os.getpid()}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old)
            else:
                tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return final


def _remove_leftovers(final: Path) -> None:
    # Only the lock holder builds, so any temporary folder now is from a killed build.
    for path in final.parent.glob(f".{final.name}.*-*"):
        shutil.rmtree(path, ignore_errors=True)


# --- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """Byte-level BPE as a `PreTrainedTokenizerFast` that prepends <s> like LLaMA's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # GPT-2's split regex cuts words at combining marks (Devanagari vowel signs are \p{M}), which
    # would keep BPE from ever merging a Devanagari syllable; split at spaces and punctuation only.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?[\p{L}\p{M}]+| ?[^\s\p{L}\p{M}]+|\s+"), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        model_max_length=model_max_length,
    )


# --- model and pre-training ----------------------------------------------------------------------


def llama_config(recipe: SandboxRecipe):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden,
        intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.seq_len,
        tie_word_embeddings=False,
        initializer_range=recipe.init_std,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )


def count_parameters(name: str) -> int:
    """Parameters of a sandbox model, without building it (counted on the meta device)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(_recipe(name)))
    return sum(p.numel() for p in model.parameters())


def weights_sha256(state_dict) -> str:
    """Hash of every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _packed_batches(docs: list[list[int]], recipe: SandboxRecipe, seed: int):
    """Endless [B, T] batches: documents as [BOS] doc [EOS], shuffled each epoch, packed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    window = recipe.batch_size * recipe.seq_len
    while True:
        order = torch.randperm(len(docs), generator=gen).tolist()
        stream = torch.tensor([t for i in order for t in (1, *docs[i], 2)], dtype=torch.long)
        n = len(stream) // window * window
        if n == 0:
            raise ValueError(f"too little sandbox text for one batch of {window} tokens")
        yield from stream[:n].view(-1, recipe.batch_size, recipe.seq_len)


def _lr_lambda(recipe: SandboxRecipe):
    def factor(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        done = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * done)
        )

    return factor


def pretrain(
    model,
    docs: list[list[int]],
    recipe: SandboxRecipe,
    *,
    seed: int,
    progress: bool = True,
    desc: str = "pre-training",
) -> list[float]:
    """AdamW with warmup + cosine on packed sequences; returns the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms: decay would just shrink them
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe))
    batches = _packed_batches(docs, recipe, seed)
    losses: list[float] = []
    hooks = []
    if recipe.dropout:
        # Hooks, not config: the saved folder stays a plain LlamaForCausalLM.
        def drop(module, args, out):
            if isinstance(out, tuple):
                return (
                    torch.nn.functional.dropout(out[0], recipe.dropout, module.training),
                    *out[1:],
                )
            return torch.nn.functional.dropout(out, recipe.dropout, module.training)

        for layer in model.model.layers:
            hooks += [
                layer.self_attn.register_forward_hook(drop),
                layer.mlp.register_forward_hook(drop),
            ]
    model.train()
    with tqdm(total=recipe.steps, desc=desc, unit="step", disable=not progress) as bar:
        for _ in range(recipe.steps):
            x = next(batches)
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update()
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
    for hook in hooks:
        hook.remove()
    model.eval()
    return losses


def build_sandbox_model(
    name: str, out_dir: str | os.PathLike, *, seed: int = 0, progress: bool = True
) -> Path:
    """Train tokenizer and model from scratch into `out_dir` (not atomic: see ensure_...)."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    recipe = _recipe(name)
    out = Path(out_dir)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(BUILD_THREADS, os.cpu_count() or 1))
    try:
        texts = corpus.generate(
            "pretrain", corpus.PRETRAIN_LANGS, n_docs=recipe.train_docs, seed=CORPUS_SEED
        )
        tok_texts = [d for lang in texts for d in texts[lang][: recipe.tokenizer_docs]]
        tokenizer = train_tokenizer(tok_texts, recipe.vocab_size, recipe.seq_len)
        all_docs = [d for lang in texts for d in texts[lang]]
        # The backend encodes without the length warning meant for single model inputs.
        docs = [
            e.ids
            for e in tokenizer.backend_tokenizer.encode_batch(all_docs, add_special_tokens=False)
        ]
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            model = LlamaForCausalLM(llama_config(recipe)).to(torch.float32)
            losses = pretrain(
                model, docs, recipe, seed=seed, progress=progress, desc=f"building {name}"
            )
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        meta = {
            "name": name,
            "seed": seed,
            "recipe": asdict(recipe),
            "recipe_version": RECIPE_VERSION,
            "recipe_digest": recipe_digest(name),
            "corpus_version": corpus.CORPUS_VERSION,
            "corpus_seed": CORPUS_SEED,
            "languages": list(corpus.PRETRAIN_LANGS),
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_sha256": weights_sha256(model.state_dict()),
            "first_loss": losses[0],
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "build_seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        (out / METADATA).write_text(json.dumps(meta, indent=1))
    finally:
        torch.set_num_threads(threads)
    log.info(
        "built %s in %.0f s (final loss %.3f)", name, meta["build_seconds"], meta["final_loss"]
    )
    return out


def read_metadata(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / METADATA).read_text())


# --- command line --------------------------------------------------------------------------------


def sample_lines(split: str = "eval", seed: int = 0) -> list[str]:
    """One sentence per language (the same meaning in each), with its grammar."""
    sentence = corpus.documents(split, 1, seed, lang=corpus.PRETRAIN_LANGS[0])[0][0]
    lines = []
    for code, spec in corpus.LANGUAGES.items():
        held = "held-out" if code in corpus.HELDOUT_LANGS else "pretrain"
        lines.append(
            f"{code}  {spec.script.title():<10} {spec.order} adj-{spec.adj:<4} {held:<8}  "
            f"{corpus.render_sentence(sentence, code)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m regionbench.sandbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (pre-train) a sandbox model into the cache")
    build.add_argument("name", help=", ".join(SANDBOX_MODELS))
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--cache-dir", default=None, help="default: $REGIONBENCH_CACHE or ~/.cache/regionbench"
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    sample = sub.add_parser("sample", help="print one sentence per sandbox language")
    sample.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "sample":
        print("\n".join(sample_lines(seed=args.seed)))
        return 0
    from regionbench.models import resolve_cache_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _recipe(args.name)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    folder = ensure_sandbox_model(
        args.name,
        resolve_cache_dir(args.cache_dir),
        force=args.force,
        progress=not args.quiet,
        seed=args.seed,
    )
    meta = read_metadata(folder)
    print(
        f"{folder}\n{meta['parameters']:,} parameters, final loss {meta['final_loss']:.3f}, "
        f"built in {meta['build_seconds']} s, weights sha256 {meta['weights_sha256'][:16]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
