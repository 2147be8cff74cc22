"""Text sources: local folders in every format through `datasets`, hash splits, and one-line
errors for bad paths, languages and unreachable hubs."""

from __future__ import annotations

import json

import pytest

from regionbench.data import load_texts
from regionbench.data.sources import _hash_split

DOCS = [f"document number {i} about the sea and the mountains." for i in range(60)]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "en.txt").write_text("\n\n".join(DOCS) + "\n")
    with (tmp_path / "de.jsonl").open("w") as f:
        for d in DOCS:
            f.write(json.dumps({"text": "de " + d, "id": 1}) + "\n")
    import datasets

    datasets.Dataset.from_dict({"text": ["fr " + d for d in DOCS]}).to_parquet(
        str(tmp_path / "fr.parquet"))
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
    from regionbench.data.sources import FLORES_CODES, PAPER_EVAL_LANGS

    assert set(PAPER_EVAL_LANGS) <= set(FLORES_CODES)
    assert FLORES_CODES["zh"] == "cmn_Hans"
    assert len(PAPER_EVAL_LANGS) == 30
