"""How much a sweep's regions agree, on its parent run: `region_overlap.csv` (one row per pair:
Jaccard and overlap coefficient), `region_overlap.md` and a Jaccard heatmap `region_overlap.png`
(condition × condition), from each job's saved mask file.

    paths = region_overlap(tracker, runs, out, params=swept, over=["seed"])

Only regions of the same model over the same parameters are compared: the other pairs of a
sweep across models read "—".
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

from regionbench.report.sweep import condition_keys, conditions, labels, what_was_done
from regionbench.tracking.client import Tracker

MAX_OVERLAP_RUNS = 60  # pairwise agreement of more regions is a table nobody reads
MAX_MASK_BYTES = 50 * 2**20  # packed bits: a 1/8 of the scored parameters (7B: ~800 MB)
NOT_COMPARED = "—"  # a pair of regions that cannot be compared entry by entry
_WHY = {
    "different models": "regions of different models (their entries are not the same weights)",
    "different parameters": "regions over different parameters",
    "different shapes": "regions over parameters of different shapes",
}


def region_overlap(
    tracker: Tracker, runs: Sequence, out: Path, *, params: Sequence[str] = (), over=("seed",)
) -> list[Path]:
    """The pairwise agreement of the sweep's regions (Jaccard and overlap coefficient, from each
    job's saved mask file) as `region_overlap.csv` (one row per pair), `region_overlap.md` and a
    Jaccard heatmap `region_overlap.png` (condition × condition), one entry per condition (its
    first seed's region). Only regions of the same model (weight fingerprint) over the same
    parameters are compared: a sweep across models shows its other pairs as "—" (a blank cell
    in the figure), with the reason in the CSV's `not_compared` column. Skipped for more than
    60 conditions or masks over 50 MB (a 7B model's masks are gigabytes)."""
    from regionbench.regions.overlap import agreement, incomparable
    from regionbench.regions.region import Region
    from regionbench.report.plots import heatmap

    groups = conditions(runs, params, over) if params else {}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    seeded = bool(groups) and len(groups) < len(finished)
    # a job goes by its run name (its overrides), unless the conditions have several seeds or
    # the jobs span models (whose ids or folders would fill the figure): by its condition
    if seeded or (groups and len({r.data.params.get("model.name") for r in finished}) > 1):
        label = labels(groups, condition_keys(params, over))
        chosen = [(label[key], members[0]) for key, members in groups.items()]
    else:
        chosen = [(r.info.run_name, r) for r in finished]
    if not 2 <= len(chosen) <= MAX_OVERLAP_RUNS:
        return []
    regions = {}
    with _quiet_artifact_downloads():
        for name, r in chosen:
            files = {a.path: a.file_size for a in tracker.client.list_artifacts(r.info.run_id)}
            if files.get("region.safetensors", MAX_MASK_BYTES + 1) > MAX_MASK_BYTES:
                continue
            local = tracker.client.download_artifacts(r.info.run_id, "region.safetensors", str(out))
            regions[name] = Region.load(local)
            Path(local).unlink()
    if len(regions) < 2:
        return []
    names_ = list(regions)
    rows, matrix, reasons = [], [], []
    for i, a in enumerate(names_):
        line = []
        for j, b in enumerate(names_):
            why = incomparable(regions[a], regions[b])
            agr = None if why else agreement(regions[a], regions[b])
            line.append(agr.jaccard if agr else math.nan)
            if why and why not in reasons:
                reasons.append(why)
            if i < j:
                rows.append(
                    {
                        "a": a,
                        "b": b,
                        "jaccard": agr.jaccard if agr else NOT_COMPARED,
                        "overlap_coefficient": agr.overlap_coefficient if agr else NOT_COMPARED,
                        "not_compared": why or "",
                    }
                )
        matrix.append(line)
    csv_path = out / "region_overlap.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = [r for _, r in chosen]
    first = " (first seed of each condition)" if seeded else ""
    note = (
        f"{NOT_COMPARED}: not compared, " + "; ".join(_WHY.get(w, w) for w in reasons)
        if reasons
        else ""
    )
    md_path = out / "region_overlap.md"
    md_path.write_text(_overlap_markdown(names_, matrix, first, note))
    png = heatmap(
        matrix,
        names_,
        names_,
        out / "region_overlap.png",
        label="Jaccard index",
        title=f"{what_was_done(done)}\nentries the regions share (Jaccard: shared / in either)"
        + first,
        fmt="{:.2f}",
        limits=(0.0, 1.0),
        missing=NOT_COMPARED,
        note=note,
    )
    return [csv_path, md_path, png]


def _overlap_markdown(names_: Sequence[str], matrix, first: str, note: str) -> str:
    lines = [
        f"Entries the regions share (Jaccard index: shared / in either){first}; the overlap "
        "coefficient of each pair is in `region_overlap.csv`." + (f" {note}." if note else ""),
        "",
        "| | " + " | ".join(names_) + " |",
        "|---|" + "---|" * len(names_),
    ]
    for name, line in zip(names_, matrix, strict=True):
        cells = [f"{v:.3f}" if math.isfinite(v) else NOT_COMPARED for v in line]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _quiet_artifact_downloads():
    """MLflow draws a progress bar per downloaded file (a line per mask at the end of every
    sweep); `MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR` is its switch, read at each download."""
    var = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(var)
    os.environ[var] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved
