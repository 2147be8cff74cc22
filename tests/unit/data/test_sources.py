"""Text sources: local folders in every format through `datasets`, hash splits, and one-line
errors for bad paths, languages and unreachable hubs."""

from __future__ import annotations

import json

import pytest

from regionbench.data.local import hash_split as _hash_split
from regionbench.data.sources import load_texts

DOCS = [f"document number {i} about the sea and the mountains." for i in range(60)]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "en.txt").write_text("\n\n".join(DOCS) + "\n")
    with (tmp_path / "de.jsonl").open("w") as f:
        for d in DOCS:
            f.write(json.dumps({"text": "de " + d, "id": 1}) + "\n")
    import datasets

    datasets.Dataset.from_dict({"text": ["fr " + d for d in DOCS]}).to_parquet(
        str(tmp_path / "fr.parquet")
    )
    return tmp_path


def test_local_formats_and_hash_split(folder):
    splits = {s: load_texts("local", s, path=str(folder)) for s in ("train", "importance", "eval")}
    assert set(splits["eval"]) == {"de", "en", "fr"}
    for lang, prefix in (("en", ""), ("de", "de "), ("fr", "fr ")):
        got = [d for s in splits.values() for d in s[lang]]
        assert sorted(got) == sorted(prefix + d for d in DOCS)  # every doc in exactly one split
        for split, texts in splits.items():
            assert all(_hash_split(d) == split for d in texts[lang])
    assert 0 < len(splits["eval"]["en"]) < len(splits["train"]["en"])


def test_split_folders_win_and_n_docs(folder):
    (folder / "eval").mkdir()
    (folder / "eval" / "en.txt").write_text("one\n\ntwo\n\nthree\n")
    assert load_texts("local", "eval", ["en"], path=str(folder)) == {"en": ["one", "two", "three"]}
    assert load_texts("local", "eval", ["en"], n_docs=2, path=str(folder)) == {"en": ["one", "two"]}


def test_local_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="is not a readable folder"):
        load_texts("local", "eval", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown language for data=local 'es'.*choices: de, en"):
        load_texts("local", "eval", ["es"], path=str(folder))
    with pytest.raises(ValueError, match="needs data.path"):
        load_texts("local", "eval")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no <lang>.txt"):
        load_texts("local", "eval", path=str(empty))
    with pytest.raises(ValueError, match="no 'body' column; columns: id, text"):
        load_texts("local", "eval", ["de"], path=str(folder), text_field="body")


def test_broken_local_files_are_one_line_before_any_model(tmp_path):
    """Empty, non-UTF-8 and unparsable files, and a language that the hash split leaves without
    documents (one document, or only blank lines), are named with what to do about them."""
    from regionbench.data.local import check_docs

    def folder(name: str, fname: str, content: bytes):
        (tmp_path / name).mkdir()
        (tmp_path / name / fname).write_bytes(content)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"xx.txt' is empty: no documents$"):
        load_texts("local", "eval", path=str(folder("empty", "xx.txt", b"")))
    bad = folder("utf", "xx.txt", b"caf\xe9\n\nok\n")
    with pytest.raises(ValueError, match=r"as text: .*byte 0xe9 in position 3.*must be UTF-8\)$"):
        load_texts("local", "eval", path=str(bad))
    bad = folder("json", "xx.jsonl", b'{"text": 1\n')
    with pytest.raises(ValueError, match="xx.jsonl' as json: JSON parse error"):
        load_texts("local", "eval", path=str(bad))
    doc = next(d for i in range(99) if _hash_split(d := f"doc {i}") == "train")
    one = folder("one", "xx.txt", doc.encode() + b"\n")
    for split in ("eval", "importance"):
        with pytest.raises(ValueError) as err:
            check_docs(one, "xx", split, "text")
        assert str(err.value).startswith(
            f"language 'xx' has no {split} documents in '{one}/xx.txt': its one document went "
            "to train (documents are split by hash: 20% eval, 20% importance, 60% train); give "
            f"more documents (~15 give every split one with 95% odds), or the split itself as "
            f"{split}/xx.txt"
        )
    assert check_docs(one, "xx", "train", "text") == 1
    (one / "eval").mkdir()
    (one / "eval" / "xx.txt").write_text("a b c\n")  # the split given: one document is enough
    assert check_docs(one, "xx", "eval", "text") == 1
    blank = folder("blank", "xx.txt", b"\n\n   \n\n")
    with pytest.raises(ValueError, match="'xx' has no eval documents .*: it has no documents"):
        check_docs(blank, "xx", "eval", "text")
    (blank / "eval").mkdir()
    (blank / "eval" / "xx.txt").write_text("  \n")
    with pytest.raises(ValueError, match=r"eval/xx.txt' has no documents for the eval split"):
        check_docs(blank, "xx", "eval", "text")
    # ~15 documents give every split at least one: 60 certainly do
    many = folder("many", "xx.txt", "\n\n".join(DOCS).encode())
    assert sum(check_docs(many, "xx", s, "text") for s in ("train", "importance", "eval")) == 60


def test_unknown_source_and_split():
    with pytest.raises(ValueError, match="unknown data source 'wikipedai': did you mean"):
        load_texts("wikipedai")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_texts("sandbox", "test")


def test_hub_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError) as err:
        load_texts("wikipedia", "eval", ["ar"], n_docs=2)
    assert "cannot stream 'wikimedia/wikipedia' config '20231101.ar'" in str(err.value)
    assert "\n" not in str(err.value)


def test_flores_codes():
    from regionbench.data.languages import FLORES_CODES, PAPER_EVAL_LANGS

    assert set(PAPER_EVAL_LANGS) <= set(FLORES_CODES)
    assert FLORES_CODES["zh"] == "cmn_Hans"
    assert len(PAPER_EVAL_LANGS) == 30


class FakeHub:
    """Stands in for `datasets.load_dataset(..., streaming=True)`: records what was asked."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def __call__(self, repo, name, split, streaming):
        self.calls.append((repo, name, split, streaming))
        return iter([{"text": r} for r in self.rows[split]])


def test_hub_path_and_config_are_the_dataset_actually_streamed(monkeypatch):
    import datasets

    fake = FakeHub({"train": [f"document {i}" for i in range(50)]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    load_texts("wikipedia", "eval", ["ar"], n_docs=2)
    load_texts("wikipedia", "eval", ["ar"], n_docs=2, path="me/wiki", config="2024.{lang}")
    load_texts("c4", "eval", ["ko"], n_docs=1)
    assert fake.calls == [
        ("wikimedia/wikipedia", "20231101.ar", "train", True),
        ("me/wiki", "2024.ar", "train", True),
        ("allenai/c4", "ko", "train", True),
    ]


def test_flores_importance_and_training_text_never_overlap(monkeypatch):
    import datasets

    dev = [f"sentence number {i}." for i in range(400)]
    fake = FakeHub({"dev": dev, "devtest": [f"test {i}." for i in range(30)]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    imp = load_texts("flores", "importance", ["ar"])["ar"]
    train = load_texts("flores", "train", ["ar"])["ar"]
    ev = load_texts("flores", "eval", ["ar"])["ar"]
    assert not set(imp) & set(train) and set(imp) | set(train) == set(dev)
    assert 150 < len(imp) < 250  # two halves, by hash
    assert ev == [f"test {i}." for i in range(30)]
    assert {c[1] for c in fake.calls} == {"arb_Arab"}


def test_belebele_codes_and_source_tasks():
    from regionbench.data.languages import FLORES200_CODES
    from regionbench.data.sources import default_tasks

    assert FLORES200_CODES["zh"] == "zho_Hans" and FLORES200_CODES["ar"] == "arb_Arab"
    assert default_tasks("sandbox") == ("sandbox_grammar",) and default_tasks("local") == ()


def test_every_paper_language_has_its_belebele_task():
    from pathlib import Path

    import lm_eval

    from regionbench.data.languages import FLORES200_CODES, PAPER_EVAL_LANGS

    folder = Path(lm_eval.__file__).parent / "tasks" / "belebele"
    missing = [
        lang
        for lang in PAPER_EVAL_LANGS
        if not (folder / f"belebele_{FLORES200_CODES[lang]}.yaml").is_file()
    ]
    assert not missing


def test_sandbox_stream_is_the_generated_corpus_read_lazily():
    import itertools

    from regionbench import sandbox

    for split in ("importance", "eval", "train"):
        head = list(itertools.islice(sandbox.stream(split, "grek"), 7))
        assert head == sandbox.generate(split, ["grek"], n_docs=7)["grek"]
    assert load_texts("sandbox", "eval", ["latn"], n_docs=3) == sandbox.generate(
        "eval", ["latn"], n_docs=3
    )


def test_text_revision_names_the_text_without_reading_it(folder):
    """What a cache key uses in place of the text itself: it changes when the text would."""
    import os

    from regionbench.data.sources import text_revision

    local = {"path": str(folder)}
    before = text_revision("local", "importance", "en", local)
    assert before == text_revision("local", "importance", "en", local)
    assert before != text_revision("local", "importance", "de", local)
    st = (folder / "en.txt").stat()
    os.utime(folder / "en.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: maybe edited
    assert text_revision("local", "importance", "en", local) != before
    (folder / "importance").mkdir()
    (folder / "importance" / "en.txt").write_text("a split file wins")
    assert "importance/en.txt" in text_revision("local", "importance", "en", local)
    sandbox = text_revision("sandbox", "importance", "latn", {})
    assert sandbox != text_revision("sandbox", "importance", "latn", {"seed": 1})
    wiki = text_revision("wikipedia", "importance", "ar", {})
    assert wiki == "wikimedia/wikipedia|20231101.ar|text"
    assert text_revision("wikipedia", "importance", "ar", {"config": "20240101.{lang}"}) != wiki


def test_the_languages_further_training_learns_by_default():
    from conftest import compose

    from regionbench.config import RunConfig
    from regionbench.data.sources import target_langs

    assert target_langs(RunConfig.from_cfg(compose([]))) == ["armn"]
    # bible-s never saw sw and tl: a freeze on the Bible learns Swahili unless told otherwise
    assert target_langs(RunConfig.from_cfg(compose(["data=bible"]))) == ["sw"]
    run = RunConfig.from_cfg(compose(["data=bible", "intervention.target_langs=[tl]"]))
    assert target_langs(run) == ["tl"]
