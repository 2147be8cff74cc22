"""Hub corpora through `datasets`, streamed: only the documents a run needs are read.

Corpora that ship a single split are divided by document hash (`local.hash_split`). FLORES+
ships `dev` and `devtest`: evaluation reads devtest (as the paper), importance and training read
two disjoint halves of dev, so further training never sees the sentences that scored importance.
"""

from __future__ import annotations

import hashlib
import itertools
import string
from collections.abc import Iterator

from regionbench.common.choices import check_choice
from regionbench.data.languages import FLORES_CODES
from regionbench.data.local import by_hash

# Each source: (dataset repo, config name template); `data.path` / `data.config` override them.
DATASETS = {
    "wikipedia": ("wikimedia/wikipedia", "20231101.{lang}"),
    "culturax": ("uonlp/CulturaX", "{lang}"),
    "c4": ("allenai/c4", "{lang}"),
    "flores": ("openlanguagedata/flores_plus", "{flores}"),
}
CONFIG_FIELDS = ("lang", "flores")


def check_config(source: str, config: object) -> None:
    """`data.config` is a config name template such as '20231101.{lang}' (quoted in YAML: an
    unquoted {lang} is a mapping)."""
    if config is None:
        return
    if source not in DATASETS:
        raise ValueError(
            f"data.config {config!r} only applies to hub sources "
            f"({', '.join(DATASETS)}), not data={source}"
        )
    if not isinstance(config, str):
        raise ValueError(
            f"data.config {config!r} is not a string: write a config name template "
            f"such as '20231101.{{lang}}' in quotes; fields: {', '.join(CONFIG_FIELDS)}"
        )
    for _, field, _, _ in string.Formatter().parse(config):
        if field is not None:
            check_choice("field in data.config", field, CONFIG_FIELDS)


def repo_and_config(
    source: str, lang: str, path: str | None, config: str | None
) -> tuple[str, str]:
    """The dataset repo and config name one language of a hub source is read from."""
    repo, template = DATASETS[source]
    repo, template = path or repo, config or template
    return repo, template.format(lang=lang, flores=FLORES_CODES.get(lang, lang))


def docs(
    source: str,
    lang: str,
    split: str,
    text_field: str,
    *,
    path: str | None = None,
    config: str | None = None,
) -> Iterator[str]:
    import datasets

    repo, name = repo_and_config(source, lang, path, config)
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
    texts: Iterator[str] = (row[text_field] for row in itertools.chain([first], rows))
    if source == "flores":
        # dev is split in two by hash: importance and further training never share a sentence.
        return texts if split == "eval" else (d for d in texts if d and _flores_half(d) == split)
    return by_hash(texts, split)


def _flores_half(text: str) -> str:
    return "importance" if hashlib.sha256(text.strip().encode()).digest()[0] % 2 else "train"
