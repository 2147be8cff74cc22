"""`python -m regionbench.compare A.safetensors B.safetensors`: how much two saved regions agree.

    python -m regionbench.compare core-latn.safetensors core-arab.safetensors [--per-matrix]

Prints the Jaccard index (|A ∩ B| / |A ∪ B|) and the overlap coefficient (|A ∩ B| /
min(|A|, |B|)) over every entry, and per matrix with --per-matrix. Mask files made for different
models (their recorded weight fingerprints differ) are refused with one line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

from regionbench.regions.overlap import agreement, check_same_model
from regionbench.regions.region import Region


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m regionbench.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("a", help="a region mask file (a run's region.safetensors)")
    ap.add_argument("b", help="another one, for the same model")
    ap.add_argument("--per-matrix", action="store_true", help="one line per matrix")
    args = ap.parse_args(argv)
    try:
        a, b = Region.load(args.a), Region.load(args.b)
        check_same_model(a, b)
        agr = agreement(a, b)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"A: {agr.sizes[0]:,} entries ({a.meta.get('metric', '?')} {a.meta.get('region', '?')} "
        f"{a.meta.get('ratio', '?')}, {a.meta.get('languages', '')})"
    )
    print(
        f"B: {agr.sizes[1]:,} entries ({b.meta.get('metric', '?')} {b.meta.get('region', '?')} "
        f"{b.meta.get('ratio', '?')}, {b.meta.get('languages', '')})"
    )
    print(
        f"shared {agr.intersection:,}  jaccard {agr.jaccard:.4f}  "
        f"overlap coefficient {agr.overlap_coefficient:.4f}"
    )
    values = list(agr.per_matrix.values())
    if values:
        print(
            f"per matrix jaccard: min {min(values):.4f}  median {statistics.median(values):.4f}"
            f"  max {max(values):.4f} ({len(values)} matrices)"
        )
    if args.per_matrix:
        for name, value in agr.per_matrix.items():
            print(f"  {value:.4f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
