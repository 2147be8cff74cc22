"""`python -m regionbench.sandbox`: build a sandbox model into the cache, or print a sample.

python -m regionbench.sandbox build sandbox-m [--force] [--cache-dir DIR] [--seed N]
python -m regionbench.sandbox sample                     # one sentence per language
"""

from __future__ import annotations

import argparse
import logging
import sys

from regionbench.common.cache import cache_root
from regionbench.sandbox import corpus
from regionbench.sandbox.languages import HELDOUT_LANGS, LANGUAGES, PRETRAIN_LANGS
from regionbench.sandbox.models import SANDBOX_MODELS, _recipe, ensure_sandbox_model, read_metadata


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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _recipe(args.name)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    try:
        folder = ensure_sandbox_model(
            args.name,
            cache_root(args.cache_dir),
            force=args.force,
            progress=not args.quiet,
            seed=args.seed,
        )
    except ValueError as err:  # a damaged folder: the message names `build <name> --force`
        parser.exit(2, f"error: {err}\n")
    meta = read_metadata(folder)
    print(
        f"{folder}\n{meta['parameters']:,} parameters, final loss {meta['final_loss']:.3f}, "
        f"built in {meta['build_seconds']} s, weights sha256 {meta['weights_sha256'][:16]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
