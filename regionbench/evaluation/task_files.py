"""regionbench's own lm-eval tasks, written as ordinary lm-eval YAML into a task folder.

    root = task_folder(ppl_texts=texts, grammar_pairs=pairs)   # what a run evaluates with
    root = write_tasks(folder, ppl_texts=texts, grammar_pairs=pairs)

`rb_ppl_<lang>` (group `rb_ppl`): rolling log-likelihood like wikitext, on the run's evaluation
text; `sandbox_grammar_<lang>` (group `sandbox_grammar`): minimal pairs scored by full-sentence
log-likelihood. One shared template plus a three-line file per language; the data goes to
data/*.jsonl. The folder runs unchanged with the `lm_eval` command line.

No code is ever written into a task folder: the templates and their Python side stay in the
installed package (regionbench/evaluation/tasks/), each language's file includes its template
by absolute path, and lm-eval resolves the template's `!function rb_tasks.<name>` next to the
template, in the package. A run's folder is private to its process (`task_folder`: a 0700
temporary folder, removed at exit), never the shared cache: anyone who can write a cache could
otherwise make lm-eval import their code in every user's jobs (a YAML `!function` names a file
to import), and writing these few files costs milliseconds.
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "tasks"  # templates and their code
PPL_TEMPLATE = "_rb_ppl_template_yaml"
GRAMMAR_TEMPLATE = "_sandbox_grammar_template_yaml"
PPL_GROUP = "rb_ppl"  # our rolling-perplexity tasks: rb_ppl_<lang>, scored without the BOS
_LANG_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_FOLDERS: dict[str, Path] = {}  # this process's task folders, by content


def task_folder(
    ppl_texts: Mapping[str, list[str]] | None = None,
    grammar_pairs: Mapping[str, list[dict]] | None = None,
) -> Path:
    """Our tasks for these inputs in a folder private to this process (written once per
    content, so every job of a sweep gives lm-eval the same include_path; removed at exit)."""
    from regionbench.common.cache import cache_key

    key = cache_key(kind="lm-eval tasks", ppl_texts=ppl_texts, grammar_pairs=grammar_pairs)
    folder = _FOLDERS.get(key)
    if folder is None or not folder.is_dir():
        folder = Path(tempfile.mkdtemp(prefix="regionbench-tasks-"))  # 0700: only we write it
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        write_tasks(folder, ppl_texts=ppl_texts, grammar_pairs=grammar_pairs)
        _FOLDERS[key] = folder
    return folder


def write_tasks(
    out_dir,
    ppl_texts: Mapping[str, list[str]] | None = None,
    grammar_pairs: Mapping[str, list[dict]] | None = None,
) -> Path:
    """Write our lm-eval tasks into `out_dir` (the include_path to give lm-eval); returns it.

    `ppl_texts` {lang: [document]} -> rb_ppl_<lang> tasks and group rb_ppl (mean bits_per_byte
    over languages). `grammar_pairs` {lang: [{"good", "bad", "kind"}]} -> sandbox_grammar_<lang>
    and group sandbox_grammar (acc and acc_<kind>, weighted by pairs). Each task is a short
    YAML file including a shared template; data goes to data/*.jsonl. Files of an earlier call
    for the same task family are replaced. Empty documents are dropped (they score nothing).
    """
    from regionbench.evaluation.tasks.rb_tasks import KINDS

    if ppl_texts is None and grammar_pairs is None:
        raise ValueError("write_tasks needs ppl_texts or grammar_pairs (both are None)")
    for family, data in (("ppl_texts", ppl_texts), ("grammar_pairs", grammar_pairs)):
        if data is None:
            continue
        if not data:
            raise ValueError(f"{family} has no languages")
        for lang, items in data.items():
            if not isinstance(lang, str) or not _LANG_CODE.match(lang):
                raise ValueError(
                    f"language code {lang!r} in {family} is not a simple name "
                    "(letters, digits, '_', '-')"
                )
            if not any(items):  # no pairs, or only empty documents
                raise ValueError(f"{family}[{lang!r}] is empty")
    for lang, pairs in (grammar_pairs or {}).items():
        for pair in pairs:
            if not {"good", "bad", "kind"} <= set(pair) or pair["kind"] not in KINDS:
                raise ValueError(
                    f"grammar pair {pair!r} of {lang!r} needs 'good', 'bad' and a "
                    f"'kind' in: {', '.join(KINDS)}"
                )

    out = Path(out_dir).resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    if ppl_texts is not None:
        rows = {lang: [{"text": doc} for doc in docs if doc] for lang, docs in ppl_texts.items()}
        _write_family(out, PPL_GROUP, PPL_TEMPLATE, rows, [("bits_per_byte", False)])
    if grammar_pairs is not None:
        rows = {
            lang: [{"good": p["good"], "bad": p["bad"], "kind": p["kind"]} for p in pairs]
            for lang, pairs in grammar_pairs.items()
        }
        metrics = [("acc", True)] + [(f"acc_{kind}", True) for kind in KINDS]
        _write_family(out, "sandbox_grammar", GRAMMAR_TEMPLATE, rows, metrics)
    return out


def _write_family(
    out: Path,
    group: str,
    template: str,
    rows: dict[str, list[dict]],
    group_metrics: list[tuple[str, bool]],
) -> None:
    """One three-line YAML (including the package's template) and one jsonl per language, and
    the group YAML. Paths are absolute and JSON-quoted (a YAML string that any path survives)."""
    for old in [*out.glob(f"{group}_*.yaml"), *(out / "data").glob(f"{group}_*.jsonl")]:
        old.unlink()
    names = []
    for lang, docs in rows.items():
        name = f"{group}_{lang}"
        names.append(name)
        data = out / "data" / f"{name}.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)
        (out / f"{name}.yaml").write_text(
            f"include: {_quoted(TEMPLATES / template)}\ntask: {name}\n"
            f"dataset_kwargs: {{data_file: {_quoted(data)}}}\n",
            encoding="utf-8",
        )
    aggregate = "".join(
        f"  - metric: {metric}\n    weight_by_size: {str(by_size).lower()}\n"
        for metric, by_size in group_metrics
    )
    (out / f"{group}.yaml").write_text(
        f"group: {group}\ntask: {json.dumps(names)}\naggregate_metric_list:\n{aggregate}"
        "metadata:\n  version: 1.0\n"
    )


def _quoted(path: Path) -> str:
    """A path as a YAML double-quoted string (JSON's quoting is valid YAML)."""
    return json.dumps(str(path), ensure_ascii=False)
