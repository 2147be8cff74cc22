"""lm-eval's task catalog: names checked against it (with a did-you-mean), per-language task
templates expanded, and hub datasets fetched before any model work, so a typo or an offline
`eval=paper` fails in seconds, not after importance and the baseline.

    prepare_tasks(["sandbox_grammar", "xnli_en"], root)    # names and datasets, now
    expand_tasks(["xnli_{lang}"], [{"lang": "en"}], root)  # (["xnli_en"], skipped)

Indexing lm-eval's ~15k built-in task files takes ~10 s, so a task manager is kept per process,
and never built when our own folder defines every task asked for.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

# [lower, upper): our tasks need `custom_dataset` (0.4.9); HFLM works with transformers 5 from
# 0.4.10 on (0.4.9.x imports AutoModelForVision2Seq). Tested: 0.4.10, 0.4.11, 0.4.13.
SUPPORTED_LM_EVAL = ("0.4.10", "0.5")
_TASK_MANAGERS: dict[tuple, tuple] = {}  # (folder, defaults) -> (files' stamps, TaskManager)
_MAX_TASK_MANAGERS = 4


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
