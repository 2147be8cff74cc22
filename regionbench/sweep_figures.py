"""The figures a sweep's parent run gets: each job's per-language perplexity ratios (bars and a
job × language heatmap), the mean against a numeric swept axis, and how much the jobs' regions
agree (`region_overlap.csv`, a Jaccard heatmap). `report.summarize_sweep` logs them."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from regionbench.tracking import Tracker

MAX_OVERLAP_RUNS = 60  # pairwise agreement of more regions is a table nobody reads
MAX_MASK_BYTES = 50 * 2**20  # packed bits: a 1/8 of the scored parameters (7B: ~800 MB)


def region_overlap(tracker: Tracker, runs: Sequence, out: Path) -> list[Path]:
    """The pairwise agreement of the sweep's regions (Jaccard and overlap coefficient, from each
    job's saved mask file) as `region_overlap.csv` and a Jaccard heatmap `region_overlap.png`.
    Skipped for more than 60 jobs or masks over 50 MB (a 7B model's masks are gigabytes)."""
    from regionbench.overlap import agreement
    from regionbench.plots import heatmap
    from regionbench.regions import Region

    done = [r for r in runs if r.info.status == "FINISHED"]
    if not 2 <= len(done) <= MAX_OVERLAP_RUNS:
        return []
    regions = {}
    for r in done:
        files = {a.path: a.file_size for a in tracker.client.list_artifacts(r.info.run_id)}
        if files.get("region.safetensors", MAX_MASK_BYTES + 1) > MAX_MASK_BYTES:
            continue
        local = tracker.client.download_artifacts(r.info.run_id, "region.safetensors", str(out))
        regions[r.info.run_name] = Region.load(local)
        Path(local).unlink()
    if len(regions) < 2:
        return []
    names_ = list(regions)
    rows, matrix = [], []
    for a in names_:
        line = []
        for b in names_:
            agr = agreement(regions[a], regions[b])
            line.append(agr.jaccard)
            if a < b:
                rows.append(
                    {
                        "a": a,
                        "b": b,
                        "jaccard": agr.jaccard,
                        "overlap_coefficient": agr.overlap_coefficient,
                    }
                )
        matrix.append(line)
    csv_path = out / "region_overlap.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["a", "b", "jaccard", "overlap_coefficient"])
        writer.writeheader()
        writer.writerows(rows)
    png = heatmap(
        matrix,
        names_,
        names_,
        out / "region_overlap.png",
        label="Jaccard",
        title="agreement of the sweep's regions (Jaccard of their entries)",
        fmt="{:.2f}",
        limits=(0.0, 1.0),
    )
    return [csv_path, png]


def sweep_plots(runs: Sequence, params: Sequence[str], out: Path) -> list[Path]:
    """Per-language perplexity ratio of each job, and the mean against a numeric swept axis."""
    from regionbench.plots import sweep_plot

    done = [r for r in runs if r.info.status == "FINISHED"]
    langs = sorted(
        {
            k.split("/", 1)[1]
            for r in done
            for k in r.data.metrics
            if k.startswith("ppl_ratio/") and k != "ppl_ratio/mean"
        }
    )
    langs = _language_order(langs, [r.info.run_name or "" for r in done])
    paths = []
    if done and langs:
        rows = [
            {
                "language": lang,
                "job": r.info.run_name,
                "ppl_ratio": r.data.metrics.get(f"ppl_ratio/{lang}", math.nan),
            }
            for r in done
            for lang in langs
        ]
        paths.append(
            sweep_plot(
                rows, "language", ["ppl_ratio"], out / "ppl_ratio_by_language.png", group="job"
            )
        )
    if done and langs and len(done) > 1:
        from regionbench.plots import heatmap

        matrix = [
            [r.data.metrics.get(f"ppl_ratio/{lang}", math.nan) for lang in langs] for r in done
        ]
        paths.append(
            heatmap(
                matrix,
                [r.info.run_name for r in done],
                langs,
                out / "ppl_ratio_heatmap.png",
                title="perplexity ratio to the unmodified model, per job and language",
                label="ppl ratio (log colour scale, white = 1)",
                center=1.0,
                log=True,
            )
        )
    numeric = [p for p in params if all(_is_number(r.data.params.get(p)) for r in done)]
    if done and numeric:
        axis, others = numeric[0], [p for p in params if p != numeric[0]]
        rows = [
            {
                axis: float(r.data.params[axis]),
                "job": " ".join(f"{p}={r.data.params.get(p)}" for p in others) or "sweep",
                "ppl_ratio/mean": r.data.metrics.get("ppl_ratio/mean", math.nan),
            }
            for r in done
        ]
        paths.append(
            sweep_plot(
                rows,
                axis,
                ["ppl_ratio/mean"],
                out / f"ppl_ratio_vs_{axis.replace('.', '_')}.png",
                group="job",
            )
        )
    return paths


def _language_order(langs: Sequence[str], job_names: Sequence[str]) -> list[str]:
    """Languages in the order the jobs name them (`region.lang=latn`, then `region.lang=cyrl`...),
    the rest alphabetically: a sweep over languages puts its diagonal on the diagonal."""
    named = [
        value
        for name in job_names
        for part in name.split()
        for value in part.split("=", 1)[1:]
        if value in langs
    ]
    first = list(dict.fromkeys(named))
    return first + sorted(lang for lang in langs if lang not in first)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False
