"""One job's page in MLflow: its numbers per language, and its description (what was done
to which model, the headline numbers).

    rows = language_table(run)   # language, ppl, ppl_ratio, 95% interval, bpb
"""

from __future__ import annotations

from regionbench.common import names


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


def job_note(run) -> str:
    """A job's description (`mlflow.note.content`, on its page): what was done to which model
    ("Removing regions of sandbox-m (5% of each matrix): taylor core 5%, seed 0"), its headline
    numbers with their 95% intervals, lm-eval's headline metrics with their standard errors,
    the per-language table, and the `lm_eval` command that scores the model (tag
    `lm_eval_command`)."""
    from regionbench.report.sweep import describe, headline_metric, what_was_done
    from regionbench.report.tables import lm_eval_headlines, markdown

    m, params = run.data.metrics, run.data.params
    words = describe(params, [])
    seed = params.get("seed")
    lines = [f"**{what_was_done([run])}**: {words}" + (f", seed {seed}." if seed else ".")]
    numbers = []
    headline = headline_metric([run])
    for metric in [headline, names.PPL_MEAN, *lm_eval_headlines(m)]:
        if metric is None or metric not in m:
            continue
        stem, _, rest = metric.partition("/")
        lo, hi = m.get(f"{stem}_lo/{rest}"), m.get(f"{stem}_hi/{rest}")
        se = m.get(f"{metric}_stderr")
        text = f"{metric} **{m[metric]:.4g}**"
        if lo is not None and hi is not None:
            text += f" (95% interval over the documents {lo:.4g} to {hi:.4g})"
        elif se is not None:
            text += f" (se {se:.2g})"
        numbers.append(text)
    if names.REGION_FRACTION in m:
        share = m[names.REGION_FRACTION]
        count = m.get(names.REGION_PARAMS)
        entries = f", {count:,.0f} entries" if count is not None else ""
        numbers.append(f"region: {share:.4g} of the block matrices{entries}")
    if numbers:
        lines += ["", "; ".join(numbers) + "."]
    rows = language_table(run)
    if rows:
        lines += ["", markdown(rows)]
    command = run.data.tags.get("lm_eval_command")
    if command:
        lines += [
            "",
            "lm-eval's numbers from its own command line, for the model it names (as loaded, "
            "or as trained where the job saved it): this job's where it changed nothing, else "
            'the unmodified model\'s (README, "Reproducing lm-eval numbers"):',
            "",
            *(f"    {line}" for line in command.splitlines()),
        ]
    return "\n".join(lines)
