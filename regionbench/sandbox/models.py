"""Sandbox models: small LLaMA models pre-trained by regionbench on the sandbox corpus.

No model hub is reachable where regionbench is built and tested, so it trains its own models on
first use (seeded, CPU-friendly, a few minutes) and caches them as ordinary Hugging Face folders
that `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load like any other.

    folder = ensure_sandbox_model("sandbox-m", cache_dir)    # builds once, then returns at once

A folder's name carries the recipe version, a hash of the recipe and the seed, so editing a recipe
(or the corpus) never loads a stale model. Builds go through `cache.publish_dir`: atomic, under a
file lock; a second process waits for the first and loads its model, and an interrupted build
leaves nothing that looks complete. The metadata file, written last, holds every file's size and
sha256; a folder damaged later (a truncated model.safetensors, a missing config.json, an edited
weight) is a one-line error naming the command that rebuilds it, before anything is loaded.

A build says in one line what it builds, why, for about how long (measured on the spot) and where
it will be cached; it checkpoints as it goes (`sandbox.pretraining`, `sandbox.checkpoint`: every CHECKPOINT_EVERY steps
or CHECKPOINT_SECONDS, and at the end of the step a Ctrl-C or SIGTERM arrives in), and the next
build resumes from the last checkpoint with the bytes an uninterrupted build would have given.
Builds run under fixed torch settings (`build_settings`), so the weights' sha256, recorded in the
metadata and printed by `python -m regionbench.sandbox build|info`, is the same whatever the
caller's thread settings; it can differ on a CPU with other kernels or another torch version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from regionbench.common.cache import file_sha256, fingerprint_model, publish_dir
from regionbench.common.choices import check_choice
from regionbench.sandbox import training_text
from regionbench.sandbox.checkpoint import Checkpoint, checkpoint_path
from regionbench.sandbox.pretraining import pretrain
from regionbench.sandbox.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

# Bump on any change to the build code that changes the weights (the recipes are hashed anyway).
RECIPE_VERSION = 1
CORPUS_SEED = training_text.CORPUS_SEED
METADATA = "regionbench_sandbox.json"  # written last: its presence marks a complete folder
# Always this many intra-op threads (also on a 1-core machine, and whatever the caller set): a
# rebuild reproduces the weights bit for bit on CPUs with the same kernels (see build_settings).
BUILD_THREADS = 2


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
    corpus: str = "sandbox"  # or "bible": data=bible's train split (sandbox.training_text)


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
    # A multilingual model trained on natural text: the Bible's train chapters in 20 of its 22
    # languages (sw and tl held out), the same passages in each, so its training languages are
    # balanced and known (unlike SmolLM2's). About 12 min on 2 CPU cores.
    "bible-s": SandboxRecipe(
        hidden=256,
        layers=4,
        heads=4,
        intermediate=768,
        steps=600,
        batch_size=8,
        seq_len=256,
        lr=2e-3,
        warmup=40,
        vocab_size=8192,
        tokenizer_docs=60,
        train_docs=400,
        corpus="bible",
    ),
}


def _recipe(name: str) -> SandboxRecipe:
    return SANDBOX_MODELS[check_choice("sandbox model", name, SANDBOX_MODELS)]


def recipe_digest(name: str) -> str:
    """Short hash of everything that determines a build besides the seed."""
    recipe = _recipe(name)
    fields = asdict(recipe)
    if fields["corpus"] == "sandbox":  # the field came later: the sandbox models keep their names
        del fields["corpus"]
    ident = {"recipe": fields, "recipe_version": RECIPE_VERSION}
    ident.update(training_text.digest_parts(recipe))
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
    """Return the folder of a sandbox model, building it first if it is missing (or `force`,
    which also discards the checkpoints of an interrupted build); a build resumes from its last
    checkpoint; a damaged folder is a one-line ValueError that says how to rebuild it."""
    _recipe(name)  # a bad name fails before any lock or folder
    final = sandbox_path(name, cache_dir, seed)

    def build(tmp: Path) -> None:  # under the folder's lock: one builder, one checkpoint writer
        if force:
            shutil.rmtree(checkpoint_path(final), ignore_errors=True)
        why = "is rebuilt (--force)" if force and final.exists() else "is not in the cache"
        build_sandbox_model(name, tmp, seed=seed, progress=progress, final=final, why=why)

    folder = publish_dir(final, build, ready=is_complete, force=force)
    problem = damage(folder)
    if problem:
        hint = rebuild_hint(name, cache_dir, seed)
        raise ValueError(f"sandbox model folder {str(folder)!r} is damaged ({problem}); {hint}")
    return folder


def rebuild_hint(name: str, cache_dir: str | os.PathLike, seed: int = 0) -> str:
    """The command that rebuilds a sandbox model in place."""
    command = f"python -m regionbench.sandbox build {name} --force --cache-dir {cache_dir}"
    return f"rebuild it with: {command}" + (f" --seed {seed}" if seed else "")


def damage(folder: Path) -> str | None:
    """What is wrong with a complete-looking model folder, or None: the files its metadata
    lists (size and sha256; each file is hashed once per process and version), and for folders
    of builds without that list, config.json and the safetensors header."""
    from safetensors import safe_open

    try:
        meta = read_metadata(folder)
    except (OSError, ValueError) as err:
        return f"{METADATA} is unreadable: {err}".splitlines()[0]
    files = meta.get("files") or {"config.json": None, "model.safetensors": None}
    for fname, info in files.items():
        path = folder / fname
        if not path.is_file():
            return f"{fname} is missing"
        if info is None:
            continue
        if (size := path.stat().st_size) != info["bytes"]:
            return f"{fname} has {size} bytes, not {info['bytes']}: truncated or replaced"
        if file_sha256(path) != info["sha256"]:
            return f"{fname} does not match its sha256: edited or corrupt"
    if "files" not in meta:  # an older build: check what can be checked without hashes
        try:
            json.loads((folder / "config.json").read_text(encoding="utf-8"))
            with safe_open(folder / "model.safetensors", framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - any way to be unreadable
            return f"{type(err).__name__}: {err}".splitlines()[0][:200]
    return None


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


def build_identity(name: str, seed: int) -> dict:
    """What a checkpoint must share with this build for a resume to give the bytes of an
    uninterrupted build: recipe and seed, library versions and the CPU kernel family."""
    import tokenizers
    import torch
    import transformers

    return {
        "name": name,
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "recipe_digest": recipe_digest(name),
        "threads": BUILD_THREADS,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


@contextlib.contextmanager
def build_settings():
    """The torch settings of every build, restored afterwards: BUILD_THREADS intra-op threads and
    deterministic algorithms (without filling new tensors, which only costs time here).

    Measured with torch 2.13 on a 2-core AVX2 CPU, a training step gives the same bytes on 1, 2,
    4 or 8 threads; what changes them is the CPU kernel family (ATEN_CPU_CAPABILITY=default
    instead of avx2) and MKL's code path (MKL_CBWR), so the metadata records the former and the
    torch version: the sha256 of a rebuild matches where those match."""
    import torch
    import torch.utils.deterministic as det

    threads = torch.get_num_threads()
    mode = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    fill = det.fill_uninitialized_memory
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        det.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])
        torch.set_num_threads(threads)


def _step_seconds(recipe: SandboxRecipe, steps: int = 2) -> float:
    """Seconds one training step takes on this machine right now: forward and backward of a
    throwaway model on random tokens (after one warm-up step; the build's RNG is untouched)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config(recipe))
        x = torch.randint(3, recipe.vocab_size, (recipe.batch_size, recipe.seq_len))
        times = []
        for _ in range(steps + 1):
            begin = time.perf_counter()
            model(input_ids=x, labels=x).loss.backward()
            times.append(time.perf_counter() - begin)
    return sum(times[1:]) / steps * 1.1  # + the optimizer step, about a tenth


def _about(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(10, round(seconds, -1)):.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"


def announcement(name: str, recipe: SandboxRecipe, done: int, final: Path, why: str) -> str:
    """The line a build starts with: what, why, for how long and where it will be cached."""
    prep = training_text.prep_seconds(recipe)
    left = _about(prep + (recipe.steps - done) * _step_seconds(recipe))
    resumes = " (an interrupted build resumes from its last checkpoint)"
    if done:
        what = f"resuming its interrupted pre-training at step {done} of {recipe.steps}"
        return f"{name} {why}: {what} ({left} left on this machine), then cached in {final}"
    what = f"pre-training it once ({count_parameters(name) / 1e6:.2f}M parameters, "
    what += f"{recipe.steps} steps, {left} on this machine)"
    return f"{name} {why}: {what}, then cached in {final}{resumes}"


def build_sandbox_model(
    name: str,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    progress: bool = True,
    final: Path | None = None,
    why: str = "is not in the cache",
    on_step=None,
) -> Path:
    """Train tokenizer and model from scratch into `out_dir` (not atomic: see ensure_...).

    `final` is the folder `out_dir` will be published as: the build says so in one line, keeps
    its checkpoints beside it (`checkpoint_path`) and resumes from the last one; without it, it
    trains in one go."""
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    recipe = _recipe(name)
    out = Path(out_dir)
    start = time.perf_counter()
    with build_settings():
        ckpt = resume = None
        if final is not None:
            ckpt = Checkpoint(checkpoint_path(final), build_identity(name, seed))
            resume = ckpt.load()
            done = resume[1]["step"] if resume else 0
            log.info("%s", announcement(name, recipe, done, final, why))
        texts = training_text.training_texts(recipe)
        tok_texts = [d for lang in texts for d in texts[lang][: recipe.tokenizer_docs]]
        tokenizer = train_tokenizer(tok_texts, recipe.vocab_size, recipe.seq_len)
        tokenizer_sha = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
        if resume and resume[1].get("tokenizer_sha256") != tokenizer_sha:
            resume = ckpt.discard("made with another tokenizer")
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
                model,
                docs,
                recipe,
                seed=seed,
                progress=progress,
                desc=f"building {name}",
                checkpoint=ckpt,
                resume=resume,
                notes={"tokenizer_sha256": tokenizer_sha},
                on_step=on_step,
            )
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(out.iterdir())
            if p.is_file() and p.name != METADATA
        }
        seconds = time.perf_counter() - start
        meta = {
            "name": name,
            "seed": seed,
            "recipe": asdict(recipe),
            "recipe_version": RECIPE_VERSION,
            "recipe_digest": recipe_digest(name),
            **{k: v for k, v in training_text.digest_parts(recipe).items() if k != "langs"},
            "languages": list(training_text.pretrain_langs(recipe)),
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_sha256": fingerprint_model(model, full=True),
            "first_loss": losses[0],
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            # With a resume: the time of every session up to its last checkpoint, and this one.
            "build_seconds": round(seconds + (resume[1]["seconds"] if resume else 0.0), 1),
            "resumed_at_step": resume[1]["step"] if resume else None,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "files": files,  # each file's size and sha256, checked before every load
        }
        (out / METADATA).write_text(json.dumps(meta, indent=1))
        if ckpt is not None:
            ckpt.clear()  # the model folder is complete: its checkpoints are spent
    log.info(
        "built %s in %.0f s (final loss %.3f), weights sha256 %s",
        name,
        meta["build_seconds"],
        meta["final_loss"],
        meta["weights_sha256"],
    )
    return out


def read_metadata(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / METADATA).read_text())
