"""Python side of regionbench's lm-eval tasks (rb_ppl_<lang>, sandbox_grammar_<lang>).

lm-eval imports this file from here, the installed package, never from a task folder: the
templates beside it say `!function rb_tasks.<name>`, which lm-eval resolves next to the template
that says it, and the per-language files of `task_files.write_tasks` include the templates by
absolute path. Standard library and `datasets` only (lm-eval loads it by file path).
"""

from __future__ import annotations

import json
from pathlib import Path

# Violation kinds of the minimal pairs; each gets an `acc_<kind>` metric (listed in the template).
KINDS = ("agreement", "word_order", "adj_position")


def load_jsonl(data_file: str, **_):
    """The task's documents from the jsonl file `data_file` (an absolute path) as the "test"
    split.

    lm-eval calls this as `custom_dataset(**metadata, **dataset_kwargs)`; only `data_file`
    (from dataset_kwargs) is ours. In memory: nothing is fetched or cached by `datasets`.
    """
    import datasets

    if not Path(data_file).is_absolute():
        raise ValueError(f"data_file {data_file!r} of a regionbench task is not an absolute path")
    with open(data_file, encoding="utf-8") as f:
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
