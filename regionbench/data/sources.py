"""Text sources by short name: the sandbox, local files, and hub corpora through `datasets`.

    docs = iter_texts("wikipedia", "importance", "ar")     # a lazy stream of documents
    texts = load_texts("sandbox", "eval", n_docs=200)      # {lang: [doc, ...]}

Hub corpora are streamed and only the documents a run needs are read. Corpora that ship a single
split are divided by a hash of each document (20% eval, 20% importance, 60% train), so a
document's split never depends on how many documents a run asks for. FLORES+ ships `dev` and
`devtest`: evaluation reads devtest (as the paper), importance and training split dev by hash
into two disjoint halves, so further training never sees the sentences that scored importance.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from regionbench.choices import check_choice

SPLITS = ("train", "importance", "eval")

# The paper's importance languages and its 30 perplexity languages (ISO 639-1).
PAPER_IMPORTANCE_LANGS = ("ar", "es", "ru", "zh", "ko", "vi")
PAPER_EVAL_LANGS = (
    "ar",
    "zh",
    "cs",
    "da",
    "nl",
    "en",
    "fi",
    "fr",
    "de",
    "el",
    "hu",
    "id",
    "it",
    "ja",
    "ko",
    "ms",
    "ml",
    "no",
    "fa",
    "pl",
    "pt",
    "ro",
    "ru",
    "es",
    "sw",
    "sv",
    "ta",
    "tr",
    "uk",
    "vi",
)

# FLORES+ names languages by ISO 639-3 + script; note Mandarin is cmn_Hans (not zho_Hans).
FLORES_CODES = {
    "ar": "arb_Arab",
    "zh": "cmn_Hans",
    "cs": "ces_Latn",
    "da": "dan_Latn",
    "nl": "nld_Latn",
    "en": "eng_Latn",
    "fi": "fin_Latn",
    "fr": "fra_Latn",
    "de": "deu_Latn",
    "el": "ell_Grek",
    "hu": "hun_Latn",
    "id": "ind_Latn",
    "it": "ita_Latn",
    "ja": "jpn_Jpan",
    "ko": "kor_Hang",
    "ms": "zsm_Latn",
    "ml": "mal_Mlym",
    "no": "nob_Latn",
    "fa": "pes_Arab",
    "pl": "pol_Latn",
    "pt": "por_Latn",
    "ro": "ron_Latn",
    "ru": "rus_Cyrl",
    "es": "spa_Latn",
    "sw": "swh_Latn",
    "sv": "swe_Latn",
    "ta": "tam_Taml",
    "tr": "tur_Latn",
    "uk": "ukr_Cyrl",
    "vi": "vie_Latn",
}

# Belebele (and other FLORES-200 task families) still call Mandarin zho_Hans.
FLORES200_CODES = FLORES_CODES | {"zh": "zho_Hans"}

# Each hub source: (dataset repo, config name template); `data.path` / `data.config` override them.
HUB_DATASETS = {
    "wikipedia": ("wikimedia/wikipedia", "20231101.{lang}"),
    "culturax": ("uonlp/CulturaX", "{lang}"),
    "c4": ("allenai/c4", "{lang}"),
    "flores": ("openlanguagedata/flores_plus", "{flores}"),
}
CONFIG_FIELDS = ("lang", "flores")
# lm-eval tasks that come with a source (the default `eval.lm_eval.tasks`).
SOURCE_TASKS: dict[str, tuple[str, ...]] = {"sandbox": ("sandbox_grammar",)}
SOURCES = ("sandbox", "local", *HUB_DATASETS)
LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def default_langs(source: str, purpose: str, path: str | None = None) -> tuple[str, ...]:
    """Languages a run uses when none are given: the sandbox's own, a folder's, or the paper's."""
    if source == "sandbox":
        from regionbench.data import sandbox

        return tuple(sandbox.PRETRAIN_LANGS)
    if source == "local":
        return tuple(sorted(_local_langs(_local_root(path))))
    return PAPER_IMPORTANCE_LANGS if purpose == "importance" else PAPER_EVAL_LANGS


def available_langs(source: str, path: str | None = None) -> tuple[str, ...]:
    if source == "sandbox":
        from regionbench.data import sandbox

        return tuple(sandbox.LANGUAGES)
    if source == "local":
        return tuple(sorted(_local_langs(_local_root(path))))
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


def check_config(source: str, config: object) -> None:
    """`data.config` is a hub config name template such as '20231101.{lang}' (quote it in YAML:
    an unquoted {lang} is a mapping)."""
    if config is None:
        return
    if source not in HUB_DATASETS:
        raise ValueError(
            f"data.config {config!r} only applies to hub sources "
            f"({', '.join(HUB_DATASETS)}), not data={source}"
        )
    if not isinstance(config, str):
        raise ValueError(
            f"data.config {config!r} is not a string: write a config name template "
            f"such as '20231101.{{lang}}' in quotes; fields: {', '.join(CONFIG_FIELDS)}"
        )
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(config) if f is not None]
    for field in fields:
        check_choice("field in data.config", field, CONFIG_FIELDS)


def default_tasks(source: str) -> tuple[str, ...]:
    """The lm-eval tasks a source brings along (sandbox: its grammar pairs; others: none)."""
    return SOURCE_TASKS.get(source, ())


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
        from regionbench.data import sandbox

        docs: Iterable[str] = sandbox.stream(split, lang, seed=seed)
    elif source == "local":
        docs = _local_docs(_local_root(path), lang, split, text_field)
    else:
        docs = _hub_docs(source, lang, split, text_field, path=path, config=config)
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
        from regionbench.data import sandbox

        n_docs = sandbox.DEFAULT_DOCS[split]
    out = {}
    for lang in langs:
        docs = iter_texts(
            source, split, lang, path=path, config=config, text_field=text_field, seed=seed
        )
        out[lang] = list(docs if n_docs is None else itertools.islice(docs, n_docs))
    return out


def _hash_split(text: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 10
    return "eval" if bucket < 2 else "importance" if bucket < 4 else "train"


def _by_hash(docs: Iterable[str], split: str) -> Iterator[str]:
    return (d for d in docs if d and _hash_split(d.strip()) == split)


# --- local folders -------------------------------------------------------------------------------


def _local_root(path: str | None) -> Path:
    if not path:
        raise ValueError("data=local needs data.path: a folder of <lang>.txt/.jsonl/.parquet files")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"data.path {str(root)!r} is not a readable folder")
    if not _local_langs(root):
        raise ValueError(
            f"data.path {str(root)!r} has no <lang>.txt, .jsonl, .json or .parquet "
            "files (optionally in train/, importance/, eval/ sub-folders)"
        )
    return root


def _local_langs(root: Path) -> set[str]:
    found = set()
    for folder in [root, *(root / s for s in SPLITS)]:
        if folder.is_dir():
            found |= {p.stem for p in folder.iterdir() if p.suffix in LOCAL_SUFFIXES}
    return found


def _local_file(folder: Path, lang: str) -> Path | None:
    for suffix in LOCAL_SUFFIXES:
        if (folder / f"{lang}{suffix}").is_file():
            return folder / f"{lang}{suffix}"
    return None


def _local_docs(root: Path, lang: str, split: str, text_field: str) -> Iterator[str]:
    """A split sub-folder wins; otherwise the top-level file is divided by document hash."""
    file = _local_file(root / split, lang)
    hashed = file is None
    file = file or _local_file(root, lang)
    if file is None:
        raise ValueError(f"no {split} text for language {lang!r} under {str(root)!r}")
    docs = _read_local(file, text_field)
    return _by_hash(docs, split) if hashed else iter(docs)


def _read_local(file: Path, text_field: str) -> list[str]:
    import datasets

    builder = LOCAL_SUFFIXES[file.suffix]
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as err:  # noqa: BLE001 - report any parse failure in one line
        raise ValueError(
            f"cannot read {str(file)!r} as {builder}: {str(err).splitlines()[0]}"
        ) from None
    if text_field not in ds.column_names:
        raise ValueError(
            f"{str(file)!r} has no {text_field!r} column; columns: "
            f"{', '.join(sorted(ds.column_names))} (set data.text_field)"
        )
    return [str(t) for t in ds[text_field]]


# --- hub corpora ---------------------------------------------------------------------------------


def _hub_docs(
    source: str,
    lang: str,
    split: str,
    text_field: str,
    *,
    path: str | None = None,
    config: str | None = None,
) -> Iterator[str]:
    import datasets

    repo, template = HUB_DATASETS[source]
    repo, template = path or repo, config or template
    name = template.format(lang=lang, flores=FLORES_CODES.get(lang, lang))
    hub_split = "train"
    if source == "flores":  # FLORES ships dev/devtest: evaluate on devtest like the paper
        hub_split = "devtest" if split == "eval" else "dev"
    try:
        ds = datasets.load_dataset(repo, name, split=hub_split, streaming=True)
        rows = iter(ds)
        first = next(rows)
    except Exception as err:  # noqa: BLE001 - offline, gated, or unknown config
        msg = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot stream {repo!r} config {name!r} for data={source} ({msg}); offline or gated? "
            "use data=local with files on disk, or data=sandbox"
        ) from None
    docs: Iterator[str] = (row[text_field] for row in itertools.chain([first], rows))
    if source == "flores":
        # dev is split in two by hash: importance and further training never share a sentence.
        return docs if split == "eval" else (d for d in docs if d and _flores_half(d) == split)
    return _by_hash(docs, split)


def _flores_half(text: str) -> str:
    return "importance" if hashlib.sha256(text.strip().encode()).digest()[0] % 2 else "train"
