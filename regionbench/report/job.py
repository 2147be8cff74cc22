"""One job's page in MLflow: its numbers per language, and its description (what was done
to which model, the headline numbers).

    rows = language_table(run)   # language, ppl, ppl_ratio, 95% interval, bpb
"""

from __future__ import annotations


def language_table(run) -> list[dict]:
    """One job's numbers per evaluation language: perplexity, its ratio to the unmodified model
    with the 95% paired bootstrap interval over the documents, and bits per byte."""
    m = run.data.metrics
    langs = [k.split("/", 1)[1] for k in m if k.startswith("ppl/") and k.count("/") == 1]
    langs = sorted(g for g in langs if g != "mean") + (["mean"] if "ppl/mean" in m else [])
    rows = []
    for lang in langs:
        row = {"language": lang, "ppl": m.get(f"ppl/{lang}")}
        if f"ppl_ratio/{lang}" in m:
            row["ppl_ratio"] = m[f"ppl_ratio/{lang}"]
            lo, hi = m.get(f"ppl_ratio_lo/{lang}"), m.get(f"ppl_ratio_hi/{lang}")
            row["95% interval"] = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi else ""
        if f"bpb/{lang}" in m:
            row["bpb"] = m[f"bpb/{lang}"]
        rows.append(row)
    return rows
