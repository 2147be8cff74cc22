"""lm-evaluation-harness on the in-memory (possibly modified) model, and our own lm-eval tasks.

    from regionbench.evaluation import harness
    root = harness.write_tasks(dir, ppl_texts=texts, grammar_pairs=pairs)  # our task folder
    harness.prepare_tasks(["sandbox_grammar", "xnli_en"], root)  # typos, missing data: fail now
    results = harness.run_lm_eval(model, tok, ["sandbox_grammar"], include_path=root)
    harness.flatten_results(results)  # {"lm_eval/sandbox_grammar/acc": 0.93, ...}

The harness is used as a library: `HFLM(pretrained=model, tokenizer=tok)` wraps the model object
itself, so an intervention in progress is what gets evaluated. Its request cache stays off: the
cache key is the task's requests, not the weights, so a cached answer would belong to whichever
model filled the cache. Every task is scored as `lm_eval --model hf` scores it, BOS included
(see `run_lm_eval`). `prepare_tasks` fetches the hub datasets before any model work, so an
offline run fails in seconds, not after importance and the baseline.

Our tasks (`write_tasks`) are ordinary lm-eval YAML: `rb_ppl_<lang>` (group `rb_ppl`), rolling
log-likelihood like wikitext, and `sandbox_grammar_<lang>` (group `sandbox_grammar`), minimal
pairs scored by full-sentence log-likelihood. The folder runs unchanged with the `lm_eval`
command line (see the templates in regionbench/evaluation/tasks/).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import random
import re
import shutil
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# [lower, upper): our tasks need `custom_dataset` (0.4.9); HFLM works with transformers 5 from
# 0.4.10 on (0.4.9.x imports AutoModelForVision2Seq). Tested: 0.4.10, 0.4.11, 0.4.13.
SUPPORTED_LM_EVAL = ("0.4.10", "0.5")
TEMPLATES = Path(__file__).parent / "tasks"
PPL_TEMPLATE = "_rb_ppl_template_yaml"
GRAMMAR_TEMPLATE = "_sandbox_grammar_template_yaml"
PPL_GROUP = "rb_ppl"  # our rolling-perplexity tasks: rb_ppl_<lang>, scored without the BOS
# How run_lm_eval sets add_bos_token; cached evaluations scored under another policy are stale.
BOS_POLICY = f"{PPL_GROUP}:False,others:lm-eval-default"
_LANG_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Indexing lm-eval's ~15k built-in task files takes ~10 s: once per process, not per call.
_TASK_MANAGERS: dict[tuple, tuple] = {}  # (folder, defaults) -> (files' stamps, TaskManager)
_MAX_TASK_MANAGERS = 4


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    include_path=None,
    log_samples: bool = False,
    add_bos_token: bool | None = None,
    max_length: int | None = None,
) -> dict:
    """Evaluate the in-memory model on lm-eval tasks; returns lm-eval's results dict.

    Task names are checked before any model work. Afterwards the model's weights and the train/
    eval mode of every module, the tokenizer's padding settings and the global random states
    (which lm-eval reseeds) are as they were.

    `add_bos_token=None` scores every task as `lm_eval --model hf` does by default: the tokenizer
    decides whether a context starts with BOS (LLaMA's does, as MMLU's protocol expects). Our
    rolling-perplexity tasks (rb_ppl, rb_ppl_<lang>) are the exception and get False, as their
    template's command line says: lm-eval puts its prefix token (BOS) before every document, and
    a tokenizer that adds BOS itself would add a second one. `True` or `False` applies to every
    task (True for models that need BOS before every context, Gemma). Tasks of the two policies
    run as two `simple_evaluate` calls, merged into one dict shaped like a single call's.
    `max_length` defaults to lm-eval's choice (the model's context length).
    """
    _check_lm_eval_version()
    tasks = _task_list(tasks)
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} is not a positive integer")
    manager = _resolve(tasks, include_path)

    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    parts = []
    with _restored(model, tokenizer), _quiet_lm_eval():
        for bos, names in _bos_policies(tasks, add_bos_token):
            lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=batch_size,
                add_bos_token=bos,
                max_length=max_length,
            )
            parts.append(
                simple_evaluate(
                    model=lm,
                    tasks=names,
                    num_fewshot=num_fewshot,
                    limit=limit,
                    use_cache=None,
                    cache_requests=False,  # keyed without the weights: never reuse
                    log_samples=log_samples,
                    task_manager=manager,
                )
            )
    return _merge_results(parts)


def flatten_results(results: Mapping) -> dict[str, float]:
    """`{"lm_eval/<task>/<metric>": value}` for every numeric task and group metric.

    lm-eval's "<metric>,<filter>" keys lose the default filter ("acc,none" -> "acc",
    "acc_stderr,none" -> "acc_stderr") and keep any other one after a slash
    ("exact_match,strict-match" -> "exact_match/strict-match"). "N/A", None and non-finite
    values (a kind no pair of a language has) are left out.
    """
    flat: dict[str, float] = {}
    for section in ("results", "groups"):
        for task, metrics in (results.get(section) or {}).items():
            for key, value in metrics.items():
                if "," not in key or isinstance(value, bool):
                    continue
                if not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                metric, filt = key.split(",", 1)
                name = metric if filt == "none" else f"{metric}/{filt}"
                flat[f"lm_eval/{task}/{name}"] = float(value)
    return flat


def check_tasks(tasks: Iterable[str], include_path=None) -> None:
    """Raise a one-line ValueError naming every unknown task, with close matches."""
    _check_lm_eval_version()
    _resolve(_task_list(tasks), include_path)


def prepare_tasks(tasks: Iterable[str], include_path=None) -> None:
    """`check_tasks`, then build every task lm-eval would fetch data for, so its dataset is in
    the local cache before the model is loaded; raises a one-line ValueError naming the task.

    Without this an offline run of hub tasks (MMLU) knows their names and fails only when
    `simple_evaluate` downloads the data, after importance and the baseline. Tasks defined by
    our folder alone are skipped: their data are files written moments ago, and the common
    sandbox run stays as cheap as `check_tasks` (building sandbox_grammar would add ~0.1 s; with
    lm-eval < 0.4.12, whose index `_self_contained` cannot read, ours are built too).
    """
    _check_lm_eval_version()
    tasks = _task_list(tasks)
    manager = _resolve(tasks, include_path)
    local = _task_manager(include_path, defaults=False) if include_path is not None else None
    if manager is local:
        return
    from lm_eval.tasks import get_task_dict

    for task in tasks:
        if local is not None and _self_contained(local, [task]):
            continue
        try:
            with _quiet_lm_eval():
                get_task_dict([task], manager)  # datasets.load_dataset: downloads and caches
        except Exception as err:  # a missing dataset surfaces as many types; all mean "cannot run"
            raise ValueError(_build_error(task, err)) from err


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

    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATES / "rb_tasks.py", out / "rb_tasks.py")
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


def known_tasks(include_path=None) -> set[str]:
    """Every task, group and tag name lm-eval knows, with our folder's (indexes lm-eval: ~10 s,
    once per process)."""
    _check_lm_eval_version()
    return set(_task_manager(include_path, defaults=True).all_tasks)


def expand_tasks(
    tasks: Iterable[str], langs: Iterable[Mapping[str, str]], include_path=None
) -> tuple[list[str], list[str]]:
    """Templates such as `xnli_{lang}` or `belebele_{flores}` become one task per run language
    that lm-eval has; returns (tasks, skipped names). Plain names pass through unchanged."""
    tasks, langs = _task_list(tasks), list(langs)
    if not any("{" in t for t in tasks):
        return tasks, []
    known = known_tasks(include_path)
    out, skipped = [], []
    for task in tasks:
        if "{" not in task:
            out.append(task)
            continue
        for codes in langs:
            name = task.format(**codes)
            (out if name in known else skipped).append(name)
    return list(dict.fromkeys(out)), skipped


def _write_family(
    out: Path,
    group: str,
    template: str,
    rows: dict[str, list[dict]],
    group_metrics: list[tuple[str, bool]],
) -> None:
    """One template, one three-line YAML and one jsonl per language, and the group YAML."""
    for old in [*out.glob(f"{group}_*.yaml"), *(out / "data").glob(f"{group}_*.jsonl")]:
        old.unlink()
    shutil.copyfile(TEMPLATES / template, out / template)
    names = []
    for lang, docs in rows.items():
        name = f"{group}_{lang}"
        names.append(name)
        with open(out / "data" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)
        (out / f"{name}.yaml").write_text(
            f"include: {template}\ntask: {name}\ndataset_kwargs: {{data_file: {name}.jsonl}}\n"
        )
    aggregate = "".join(
        f"  - metric: {metric}\n    weight_by_size: {str(by_size).lower()}\n"
        for metric, by_size in group_metrics
    )
    (out / f"{group}.yaml").write_text(
        f"group: {group}\ntask: {json.dumps(names)}\naggregate_metric_list:\n{aggregate}"
        "metadata:\n  version: 1.0\n"
    )


def _bos_policies(tasks: list[str], add_bos_token: bool | None) -> list[tuple]:
    """[(add_bos_token, tasks)], one per `simple_evaluate` call, in the order tasks first appear.

    Our rb_ppl tasks get False, every other task lm-eval's default (None), unless the caller
    chose one policy for all. Partitioned by the names asked for: a group of the caller's that
    mixed rb_ppl with other tasks would be scored under one policy.
    """
    if add_bos_token is not None:
        return [(add_bos_token, tasks)]
    parts: dict[bool | None, list[str]] = {}
    for task in tasks:
        ours = task == PPL_GROUP or task.startswith(f"{PPL_GROUP}_")
        parts.setdefault(False if ours else None, []).append(task)
    return list(parts.items())


# The per-task sections of a simple_evaluate result, in lm-eval's order; those it sorts by name.
_SECTIONS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "samples",
)
_SORTED_SECTIONS = ("configs", "versions", "n-shot", "higher_is_better")


def _merge_results(parts: list[dict]) -> dict:
    """Several `simple_evaluate` results as one: the per-task sections joined (a section no call
    has, such as `groups` or `samples`, stays absent), the run's metadata (`config`, `date`,
    environment) from the first call, since the calls differ only in `add_bos_token`."""
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for key in dict.fromkeys([*_SECTIONS, *(k for part in parts for k in part)]):
        if key not in _SECTIONS:
            merged[key] = next(part[key] for part in parts if key in part)
            continue
        if not any(key in part for part in parts):
            continue
        joined = {}
        for part in parts:
            joined.update(part.get(key) or {})
        merged[key] = dict(sorted(joined.items())) if key in _SORTED_SECTIONS else joined
    return merged


def _build_error(task: str, err: Exception) -> str:
    """One line: which task (a group's member when a member failed) and why."""
    from lm_eval.api.task import Task

    name, in_download, tb = task, False, err.__traceback__
    while tb is not None:  # the innermost Task being built names the member that failed
        frame = tb.tb_frame
        obj = frame.f_locals.get("self")
        if isinstance(obj, Task):
            name = getattr(getattr(obj, "config", None), "task", None) or name
            in_download = in_download or frame.f_code.co_name == "download"
        tb = tb.tb_next
    where = f"lm-eval task {name!r}" + (f" (in {task!r})" if name != task else "")
    reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    if not in_download:
        return f"cannot build {where}: {reason}"
    offline = [
        var
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
    ]
    hint = f" (offline? {offline[0]} is set)" if offline else ""
    return f"cannot load the dataset of {where}{hint}: {reason}"


def _check_lm_eval_version() -> None:
    from importlib.metadata import version

    from packaging.version import Version

    found = version("lm_eval")
    low, high = SUPPORTED_LM_EVAL
    if not Version(low) <= Version(found) < Version(high):
        raise RuntimeError(
            f"lm-eval {found} is not supported: regionbench needs "
            f"lm-eval>={low},<{high} (pip install 'lm-eval[hf]>={low},<{high}')"
        )


def _task_list(tasks) -> list[str]:
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    for task in tasks:
        if not isinstance(task, str):
            raise ValueError(f"lm-eval task {task!r} is not a name (str)")
    return tasks


def _resolve(tasks: list[str], include_path):
    """The TaskManager that knows all `tasks`, or a one-line ValueError for unknown ones.

    When our folder alone defines every task, lm-eval's built-in tasks are not indexed at all:
    that index costs ~10 s per process, far more than evaluating a sandbox model.
    """
    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"lm-eval include_path '{include_path}' is not a directory")
    if include_path is not None:
        local = _task_manager(include_path, defaults=False)
        if _self_contained(local, tasks):
            return local
    manager = _task_manager(include_path, defaults=True)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not _is_yaml_file(t)]
    if unknown:
        hints = []
        for task in unknown:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            hints.append(f"{task!r}{hint}")
        where = f" and {include_path}" if include_path is not None else ""
        raise ValueError(
            f"unknown lm-eval task {', '.join(hints)}: not among the {len(known)} "
            f"tasks, groups and tags of lm-eval{where} (`lm_eval ls tasks`)"
        )
    return manager


def _task_manager(include_path, *, defaults: bool):
    """A TaskManager per (folder, defaults), rebuilt when a file of the folder changes.

    Kept for the life of the process (a few, oldest dropped first): each full one holds the
    configs of every built-in task.
    """
    from lm_eval.tasks import TaskManager

    root, stamp = None, ()
    if include_path is not None:
        root = str(Path(include_path).resolve())
        stamp = tuple(
            sorted(
                (str(p), p.stat().st_mtime_ns, p.stat().st_size)
                for p in Path(root).rglob("*")
                if p.is_file()
            )
        )
    key = (root, defaults)
    cached = _TASK_MANAGERS.pop(key, None)
    if cached is None or cached[0] != stamp:
        cached = (stamp, TaskManager(include_path=root, include_defaults=defaults))
    _TASK_MANAGERS[key] = cached  # most recently used last
    while len(_TASK_MANAGERS) > _MAX_TASK_MANAGERS:
        del _TASK_MANAGERS[next(iter(_TASK_MANAGERS))]
    return cached[1]


def _self_contained(manager, tasks: list[str]) -> bool:
    """True if `manager` knows `tasks` and, recursively, every member of their groups/tags.

    Reads lm-eval's task index (entries with `kind`/`cfg`/`tags`, lm-eval >= 0.4.12); on any
    other layout answers False, which only costs the full index.
    """
    try:
        from lm_eval.tasks._index import Kind

        leaf_kinds = (Kind.TASK, Kind.PY_TASK)
    except (ImportError, AttributeError):
        return False
    index = getattr(manager, "task_index", None)
    if not isinstance(index, Mapping):
        return False
    pending, seen = list(tasks), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = index.get(name)
        if entry is None:
            return False
        kind = getattr(entry, "kind", None)
        if kind == Kind.TAG:
            pending.extend(getattr(entry, "tags", ()))
        elif kind == Kind.GROUP:
            members = (getattr(entry, "cfg", None) or {}).get("task", [])
            for member in members if isinstance(members, list) else [members]:
                if isinstance(member, str):
                    pending.append(member)
                elif not (isinstance(member, dict) and "dataset_path" in member):
                    return False  # an override of a task we may not know: ask the full index
        elif kind not in leaf_kinds:
            return False
    return True


def _is_yaml_file(task: str) -> bool:
    return task.endswith(".yaml") and Path(task).is_file()


@contextmanager
def _restored(model, tokenizer):
    """Undo what HFLM and simple_evaluate change: module modes (HFLM calls model.eval()),
    the tokenizer's pad token and padding side, and the global RNGs (simple_evaluate seeds
    python, numpy and torch, which would silently reset a training loop's randomness)."""
    modes = {module: module.training for module in model.modules()}
    pad_token, padding_side = tokenizer.pad_token, tokenizer.padding_side
    rng = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    )
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)
        if tokenizer.pad_token != pad_token:
            tokenizer.pad_token = pad_token
        tokenizer.padding_side = padding_side
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])


class _DropExpected(logging.Filter):
    """Warnings lm-eval gives for exactly what this module does on purpose."""

    EXPECTED = (
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
        "Custom kwargs can be passed to `--metadata`",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.EXPECTED)


@contextmanager
def _quiet_lm_eval():
    loggers = [
        logging.getLogger(name) for name in ("lm_eval.models.huggingface", "lm_eval.api.task")
    ]
    drop = _DropExpected()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
