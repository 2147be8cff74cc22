"""Python side of regionbench's lm-eval tasks (rb_ppl_<lang>, sandbox_grammar_<lang>).

lm-eval imports this file from the task folder written by `regionbench.evaluation.harness.
write_tasks` (YAML `!function rb_tasks.<name>`), so it must work without regionbench installed:
standard library and `datasets` only. Data is read relative to this file, so the folder can be
moved or renamed after it is written.
"""

from __future__ import annotations

import json
from pathlib import Path

# Violation kinds of the minimal pairs; each gets an `acc_<kind>` metric (listed in the template).
KINDS = ("agreement", "word_order", "adj_position")


def load_jsonl(data_file: str, **_):
    """The task's documents from data/<data_file> as the "test" split.

    lm-eval calls this as `custom_dataset(**metadata, **dataset_kwargs)`; only `data_file`
    (from dataset_kwargs) is ours. In memory: nothing is fetched or cached by `datasets`.
    """
    import datasets

    with open(Path(__file__).parent / "data" / data_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def grammar_choices(doc: dict) -> list[str]:
    """The grammatical sentence first: gold index 0."""
    return [doc["good"], doc["bad"]]


def grammar_results(doc: dict, results: list) -> dict:
    """1 if the grammatical sentence is more likely, 0 if less, 0.5 on an exact tie.

    A tie gets half credit rather than lm-eval's argmax-picks-the-first (which would count it as
    right): a model that cannot tell the sentences apart scores chance, not 1. `acc_<kind>` is
    reported for the pair's own kind only (None for the others; see `mean_of_scored`).
    """
    good, bad = (ll for ll, _ in results)
    score = 1.0 if good > bad else 0.5 if good == bad else 0.0
    return {"acc": score, **{f"acc_{k}": score if doc["kind"] == k else None for k in KINDS}}


def mean_of_scored(items: list) -> float:
    """Mean over the documents that have the metric (the pairs of one kind)."""
    values = [x for x in items if x is not None]
    return sum(values) / len(values) if values else float("nan")
