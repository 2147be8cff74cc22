"""`python -m regionbench.sandbox`: build a sandbox model into the cache, say what a built one
is (recipe, weights sha256, build time), or print a sample.

python -m regionbench.sandbox build sandbox-m [--force] [--cache-dir DIR] [--seed N]
python -m regionbench.sandbox info [sandbox-m ...]       # what is built, with its sha256
python -m regionbench.sandbox sample                     # one sentence per language

An interrupted build (Ctrl-C, a kill) resumes from its last checkpoint when it is run again;
`--force` discards the checkpoints and the built folder and starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

from regionbench.common.cache import cache_root
from regionbench.sandbox import corpus
from regionbench.sandbox.checkpoint import STATE, checkpoint_path
from regionbench.sandbox.languages import HELDOUT_LANGS, LANGUAGES, PRETRAIN_LANGS
from regionbench.sandbox.models import (
    SANDBOX_MODELS,
    _recipe,
    count_parameters,
    damage,
    ensure_sandbox_model,
    is_complete,
    read_metadata,
    sandbox_path,
)


def sample_lines(split: str = "eval", seed: int = 0) -> list[str]:
    """One sentence per language (the same meaning in each), with its grammar."""
    sentence = corpus.documents(split, 1, seed, lang=PRETRAIN_LANGS[0])[0][0]
    lines = []
    for code, spec in LANGUAGES.items():
        held = "held-out" if code in HELDOUT_LANGS else "pretrain"
        lines.append(
            f"{code}  {spec.script.title():<10} {spec.order} adj-{spec.adj:<4} {held:<8}  "
            f"{corpus.render_sentence(sentence, code)}"
        )
    return lines


def info_lines(name: str, cache_dir, seed: int = 0) -> list[str]:
    """What `info` prints of one sandbox model: its recipe, and once built the sha256 of its
    weights and files, its losses, build time and the machine settings it was built with."""
    from dataclasses import asdict

    folder = sandbox_path(name, cache_dir, seed)
    recipe = ", ".join(f"{k}={v}" for k, v in asdict(_recipe(name)).items())
    lines = [f"{name} (seed {seed}): {count_parameters(name):,} parameters", f"  recipe   {recipe}"]
    if not is_complete(folder):
        seeded = f" --seed {seed}" if seed else ""
        lines.append(
            f"  folder   {folder} (not built: python -m regionbench.sandbox build {name}{seeded})"
        )
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads((checkpoint_path(folder) / STATE).read_text(encoding="utf-8"))
            lines.append(f"  partial  a build was interrupted at step {state['step']}: it resumes")
        return lines
    problem = damage(folder)
    try:
        meta = read_metadata(folder)
    except (OSError, ValueError):
        return [*lines, f"  folder   {folder} (damaged: {problem})"]
    files = meta.get("files", {})
    resumed = meta.get("resumed_at_step")
    lines += [
        f"  folder   {folder}" + (f" (damaged: {problem})" if problem else ""),
        f"  weights  sha256 {meta['weights_sha256']}",
        *(f"  file     sha256 {files[f]['sha256']}  {f}" for f in sorted(files)),
        f"  loss     {meta['first_loss']:.3f} -> {meta['final_loss']:.3f} (mean of the last 20 steps)",
        f"  built    {meta.get('built_at', '?')} in {meta['build_seconds']} s"
        + (f" (resumed at step {resumed})" if resumed else ""),
        f"  with     torch {meta.get('torch')}, transformers {meta.get('transformers')}, "
        f"{meta.get('threads')} threads, CPU kernels {meta.get('cpu_capability', '?')}",
    ]
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
    info = sub.add_parser("info", help="recipe, weights sha256 and build time of sandbox models")
    info.add_argument("names", nargs="*", help="default: all of " + ", ".join(SANDBOX_MODELS))
    info.add_argument("--cache-dir", default=None, help="default: as for build")
    info.add_argument("--seed", type=int, default=0)
    sample = sub.add_parser("sample", help="print one sentence per sandbox language")
    sample.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "sample":
        print("\n".join(sample_lines(seed=args.seed)))
        return 0
    try:
        for name in [args.name] if args.command == "build" else args.names:
            _recipe(name)
        root = cache_root(args.cache_dir)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if args.command == "info":
        for name in args.names or SANDBOX_MODELS:
            print("\n".join(info_lines(name, root, args.seed)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = ensure_sandbox_model(
            args.name,
            root,
            force=args.force,
            progress=not args.quiet,
            seed=args.seed,
        )
    except ValueError as err:  # a damaged folder: the message names `build <name> --force`
        parser.exit(2, f"error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, logged with where the build will resume
        print("interrupted", file=sys.stderr)
        return 130
    meta = read_metadata(folder)
    print(
        f"{folder}\n{meta['parameters']:,} parameters, final loss {meta['final_loss']:.3f}, "
        f"built in {meta['build_seconds']} s\nweights sha256 {meta['weights_sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
