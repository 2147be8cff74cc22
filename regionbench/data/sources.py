"""Text per language by source name: the sandbox, a local folder, or a hub corpus.

    docs = iter_texts("wikipedia", "importance", "ar")     # a lazy stream of documents
    texts = load_texts("sandbox", "eval", n_docs=200)      # {lang: [doc, ...]}

Every source gives the same shape, so no later stage knows where text came from. This module also
holds the language policy of a run (which languages score importance, are evaluated, are
further-trained on) and checks `data.*` before any model work.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

from regionbench import sandbox
from regionbench.common.choices import check_choice
from regionbench.config import DataConfig, RunConfig
from regionbench.data import hub, local
from regionbench.data.languages import FLORES_CODES, PAPER_EVAL_LANGS, PAPER_IMPORTANCE_LANGS

SPLITS = ("train", "importance", "eval")
SOURCES = ("sandbox", "local", *hub.DATASETS)
# lm-eval tasks that come with a source (the default `eval.lm_eval.tasks`).
SOURCE_TASKS: dict[str, tuple[str, ...]] = {"sandbox": ("sandbox_grammar",)}


def default_tasks(source: str) -> tuple[str, ...]:
    """The lm-eval tasks a source brings along (sandbox: its grammar pairs; others: none)."""
    return SOURCE_TASKS.get(source, ())


def default_langs(source: str, purpose: str, path: str | None = None) -> tuple[str, ...]:
    """Languages a run uses when none are given: the sandbox's own, a folder's, or the paper's."""
    if source == "sandbox":
        return tuple(sandbox.PRETRAIN_LANGS)
    if source == "local":
        return tuple(sorted(local.langs(local.root(path))))
    return PAPER_IMPORTANCE_LANGS if purpose == "importance" else PAPER_EVAL_LANGS


def available_langs(source: str, path: str | None = None) -> tuple[str, ...]:
    if source == "sandbox":
        return tuple(sandbox.LANGUAGES)
    if source == "local":
        return tuple(sorted(local.langs(local.root(path))))
    if source == "flores":
        return tuple(FLORES_CODES)
    return ()  # open-ended: any code the hub dataset has


def check_langs(source: str, langs: Iterable[str], path: str | None = None) -> list[str]:
    """One-line error for a language the source does not have, before any heavy work."""
    choices = available_langs(source, path)
    langs = list(langs)
    if choices:
        for lang in langs:
            check_choice(f"language for data={source}", lang, choices)
    return langs


def iter_texts(
    source: str,
    split: str,
    lang: str,
    *,
    path: str | None = None,
    config: str | None = None,
    text_field: str = "text",
    seed: int = 0,
) -> Iterator[str]:
    """A lazy stream of one language's non-empty documents (stripped) of one split."""
    check_choice("data source", source, SOURCES)
    check_choice("split", split, SPLITS)
    check_langs(source, [lang], path)
    if source == "sandbox":
        docs: Iterable[str] = sandbox.stream(split, lang, seed=seed)
    elif source == "local":
        docs = local.docs(local.root(path), lang, split, text_field)
    else:
        docs = hub.docs(source, lang, split, text_field, path=path, config=config)
    return (d.strip() for d in docs if d and d.strip())


def load_texts(
    source: str = "sandbox",
    split: str = "eval",
    langs: Iterable[str] | None = None,
    n_docs: int | None = None,
    *,
    path: str | None = None,
    config: str | None = None,
    text_field: str = "text",
    seed: int = 0,
) -> dict[str, list[str]]:
    """`{lang: [document, ...]}` for one split of one source (the first `n_docs` per language;
    the sandbox's default count when `n_docs` is None, every document for other sources)."""
    check_choice("data source", source, SOURCES)
    check_choice("split", split, SPLITS)
    langs = check_langs(source, langs or default_langs(source, split, path), path)
    if source == "sandbox" and n_docs is None:
        n_docs = sandbox.DEFAULT_DOCS[split]
    out = {}
    for lang in langs:
        docs = iter_texts(
            source, split, lang, path=path, config=config, text_field=text_field, seed=seed
        )
        out[lang] = list(docs if n_docs is None else itertools.islice(docs, n_docs))
    return out


def reading(data: DataConfig) -> dict:
    """The keyword arguments of `iter_texts`/`load_texts` that come from `data.*`."""
    return {"path": data.path, "config": data.config, "text_field": data.text_field}


# --- the run's languages -------------------------------------------------------------------------


def importance_langs(run: RunConfig) -> list[str]:
    d = run.data
    return list(d.importance_langs or default_langs(d.source, "importance", d.path))


def eval_langs(run: RunConfig) -> list[str]:
    d = run.data
    return list(d.eval_langs or default_langs(d.source, "eval", d.path))


def target_langs(run: RunConfig) -> list[str]:
    """Further-training languages (of an intervention that trains): as set, else the sandbox's
    first held-out language, else the first evaluation language."""
    if run.intervention.target_langs:
        return list(run.intervention.target_langs)
    if run.data.source == "sandbox":
        return [sandbox.HELDOUT_LANGS[0]]
    return [eval_langs(run)[0]]


def check(run: RunConfig) -> None:
    """`data.*` and every language the run will read, before any model or dataset is touched."""
    d = run.data
    check_choice("data source", d.source, SOURCES)
    hub.check_config(d.source, d.config)
    check_langs(d.source, importance_langs(run), d.path)
    check_langs(d.source, eval_langs(run), d.path)
    if isinstance(d.eval_docs, bool) or not isinstance(d.eval_docs, int) or d.eval_docs < 1:
        raise ValueError(f"data.eval_docs {d.eval_docs!r} must be an integer >= 1")
    check_documents(run, "eval", eval_langs(run))


def check_targets(run: RunConfig, targets: Sequence[str]) -> None:
    """The languages a training job further trains on (`Plan.target_langs`) exist and have
    training text."""
    if targets:
        check_langs(run.data.source, targets, run.data.path)
        check_documents(run, "train", targets)


def check_documents(run: RunConfig, split: str, langs: Iterable[str]) -> None:
    """data=local: every language in `langs` has `split` documents, else one line saying how
    to give some (an empty, unreadable or too small file fails here, not after the model loads).
    Other sources are streamed: nothing is read up front."""
    d = run.data
    if d.source != "local":
        return
    folder = local.root(d.path)
    for lang in langs:
        local.check_docs(folder, lang, split, d.text_field)
