"""Text from a local folder: `<lang>.txt` (blank-line-separated documents), `<lang>.jsonl`/`.json`
or `<lang>.parquet` (a text column), read through `datasets`; optional `train/`, `importance/`,
`eval/` sub-folders give the splits, otherwise each document's split is decided by its hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

SPLITS = ("train", "importance", "eval")
SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def hash_split(text: str) -> str:
    """A document's split from its hash (20% eval, 20% importance, 60% train): it never depends
    on how many documents a run asks for."""
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % 10
    return "eval" if bucket < 2 else "importance" if bucket < 4 else "train"


def by_hash(docs: Iterable[str], split: str) -> Iterator[str]:
    return (d for d in docs if d and hash_split(d.strip()) == split)


def root(path: str | None) -> Path:
    """The folder `data.path`, checked: it exists and holds some language's text."""
    if not path:
        raise ValueError("data=local needs data.path: a folder of <lang>.txt/.jsonl/.parquet files")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"data.path {str(folder)!r} is not a readable folder")
    if not langs(folder):
        raise ValueError(
            f"data.path {str(folder)!r} has no <lang>.txt, .jsonl, .json or .parquet "
            "files (optionally in train/, importance/, eval/ sub-folders)"
        )
    return folder


def langs(folder: Path) -> set[str]:
    found = set()
    for sub in [folder, *(folder / s for s in SPLITS)]:
        if sub.is_dir():
            found |= {p.stem for p in sub.iterdir() if p.suffix in SUFFIXES}
    return found


def docs(folder: Path, lang: str, split: str, text_field: str) -> Iterator[str]:
    """A split sub-folder wins; otherwise the top-level file is divided by document hash."""
    file, hashed = source_file(folder, lang, split)
    texts = _read(file, text_field)
    return by_hash(texts, split) if hashed else iter(texts)


def check_docs(folder: Path, lang: str, split: str, text_field: str) -> int:
    """The number of `split` documents of `lang` (>= 1), else a one-line error that says where
    they would come from and how to give some. Reads the file (cheap next to loading a model)."""
    file, hashed = source_file(folder, lang, split)
    texts = [t for t in _read(file, text_field) if t and t.strip()]
    found = sum(1 for _ in by_hash(texts, split)) if hashed else len(texts)
    if found:
        return found
    if not hashed:
        raise ValueError(f"{str(file)!r} has no documents for the {split} split of {lang!r}")
    to = {s: sum(1 for _ in by_hash(texts, s)) for s in SPLITS}
    went = ", ".join(f"{n} to {s}" for s, n in to.items() if n)
    if len(texts) == 1:
        went = f"its one document went to {next(s for s, n in to.items() if n)}"
    else:
        went = f"its {len(texts)} documents went {went}" if texts else "it has no documents"
    raise ValueError(
        f"language {lang!r} has no {split} documents in {str(file)!r}: {went} (documents are "
        f"split by hash: 20% eval, 20% importance, 60% train); give more documents (~15 give "
        f"every split one with 95% odds), or the split itself as {split}/{file.name}"
    )


def source_file(folder: Path, lang: str, split: str) -> tuple[Path, bool]:
    """(file, whether its documents are divided by hash) of one language's split."""
    file = _file(folder / split, lang)
    if file is not None:
        return file, False
    file = _file(folder, lang)
    if file is None:
        raise ValueError(f"no {split} text for language {lang!r} under {str(folder)!r}")
    return file, True


def _file(folder: Path, lang: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{lang}{suffix}").is_file():
            return folder / f"{lang}{suffix}"
    return None


def _read(file: Path, text_field: str) -> list[str]:
    import datasets

    builder = SUFFIXES[file.suffix]
    if file.stat().st_size == 0:
        raise ValueError(f"{str(file)!r} is empty: no documents")
    kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as err:  # noqa: BLE001 - report any parse failure in one line
        raise ValueError(f"cannot read {str(file)!r} as {builder}: {_reason(err)}") from None
    if text_field not in ds.column_names:
        raise ValueError(
            f"{str(file)!r} has no {text_field!r} column; columns: "
            f"{', '.join(sorted(ds.column_names))} (set data.text_field)"
        )
    return [str(t) for t in ds[text_field]]


def _reason(err: BaseException) -> str:
    """What went wrong underneath `datasets`' "An error occurred while generating the dataset"
    (the parse error it wraps), in one line."""
    chain = [err]
    while len(chain) < 8 and (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(nxt)
    inner = next((e for e in chain if type(e).__name__ != "DatasetGenerationError"), err)
    if type(inner).__name__ == "SchemaInferenceError":
        return "no documents in it"
    reason = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
    if isinstance(inner, UnicodeDecodeError):
        reason += " (text files must be UTF-8)"
    return reason
