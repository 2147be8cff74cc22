"""Accuracy of eval.generation's natural-text language identifier (py3langid, restricted to the
languages present plus `zxx`, abstaining below `--min-confidence`) on held-out labelled text.

    .venv/bin/python benchmarks/bench_langid.py TEXTS.jsonl [--min-confidence 0.5]

TEXTS.jsonl holds one {"lang": ISO 639-1 code, "text": ..., "cond": optional group} per line; no
such text ships with regionbench (the figures in benchmarks/README.md come from Bible verses that
py3langid did not train on). The identifier is the one a run uses
(`regionbench.evaluation.generation.natural_identifier`), so "und" (abstained) counts as wrong.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("texts")
    ap.add_argument("--min-confidence", type=float, default=0.5)
    args = ap.parse_args(argv)

    from regionbench.evaluation.generation import natural_identifier

    with open(args.texts, encoding="utf-8") as f:
        data = [json.loads(line) for line in f if line.strip()]
    langs = sorted({x["lang"] for x in data})
    identify = natural_identifier(langs, args.min_confidence)
    t0 = time.perf_counter()
    found = [identify(x["text"]) for x in data]
    ms = 1000 * (time.perf_counter() - t0) / len(data)
    right, total, abstained = Counter(), Counter(), Counter()
    per_lang = defaultdict(Counter)
    for x, label in zip(data, found, strict=True):
        group = x.get("cond", "all")
        total[group] += 1
        right[group] += label == x["lang"]
        abstained[group] += label == "und"
        per_lang[x["lang"]][label == x["lang"]] += 1
    print(
        f"{len(data)} texts in {len(langs)} languages, min_confidence {args.min_confidence}, "
        f"{ms:.2f} ms per text\n"
    )
    print("| texts | n | accuracy % | abstained % |\n|---|---|---|---|")
    for group in sorted(total):
        n = total[group]
        print(
            f"| {group} | {n} | {100 * right[group] / n:.1f} | {100 * abstained[group] / n:.1f} |"
        )
    n = sum(total.values())
    print(
        f"| all | {n} | {100 * sum(right.values()) / n:.1f} | {100 * sum(abstained.values()) / n:.1f} |"
    )
    worst = sorted(per_lang, key=lambda lang: per_lang[lang][True] / sum(per_lang[lang].values()))
    print(
        "\nlowest per language: "
        + ", ".join(
            f"{lang} {100 * per_lang[lang][True] / sum(per_lang[lang].values()):.1f}"
            for lang in worst[:4]
        )
    )


if __name__ == "__main__":
    main()
