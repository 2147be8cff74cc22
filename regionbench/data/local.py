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
    file = _file(folder / split, lang)
    hashed = file is None
    file = file or _file(folder, lang)
    if file is None:
        raise ValueError(f"no {split} text for language {lang!r} under {str(folder)!r}")
    texts = _read(file, text_field)
    return by_hash(texts, split) if hashed else iter(texts)


def _file(folder: Path, lang: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{lang}{suffix}").is_file():
            return folder / f"{lang}{suffix}"
    return None


def _read(file: Path, text_field: str) -> list[str]:
    import datasets

    builder = SUFFIXES[file.suffix]
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
