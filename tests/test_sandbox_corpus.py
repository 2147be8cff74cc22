"""The sandbox corpus: determinism, disjoint splits, parallel eval, scripts, grammar, pairs."""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import replace

import pytest

from regionbench.data import sandbox as sb

ALL = list(sb.LANGUAGES)


def concepts(lang: str, doc: str) -> Counter:
    """Read a rendering back into its content concepts (category, id), ignoring word order."""
    forms = sb.word_forms(lang)
    stop = sb.LANGUAGES[lang].stop
    words = [w.removesuffix(stop) for w in doc.split()]
    return Counter(forms[w] for w in words if w in forms)


def test_language_inventory():
    assert len(sb.PRETRAIN_LANGS) >= 6 and len(sb.HELDOUT_LANGS) >= 2
    assert not set(sb.PRETRAIN_LANGS) & set(sb.HELDOUT_LANGS)
    assert set(sb.PRETRAIN_LANGS) | set(sb.HELDOUT_LANGS) == set(sb.LANGUAGES)
    specs = [sb.LANGUAGES[code] for code in sb.PRETRAIN_LANGS]
    assert {s.order for s in specs} == {"SVO", "SOV", "VSO"}
    assert {s.adj for s in specs} == {"pre", "post"}
    assert len({s.script for s in sb.LANGUAGES.values()}) == len(sb.LANGUAGES)
    assert all(code == code.lower() and len(code) <= 4 for code in sb.LANGUAGES)


def test_same_seed_gives_identical_bytes_and_prefixes():
    a = sb.generate("train", langs=ALL, n_docs=20, seed=3)
    b = sb.generate("train", langs=ALL, n_docs=20, seed=3)
    assert repr(a).encode() == repr(b).encode()
    short = sb.generate("train", langs=ALL, n_docs=5, seed=3)
    assert all(short[lang] == a[lang][:5] for lang in ALL)
    assert sb.generate("train", langs=["latn"], n_docs=20, seed=4)["latn"] != a["latn"]


def test_default_languages_and_sizes():
    texts = sb.generate("eval", n_docs=3)
    assert tuple(texts) == sb.PRETRAIN_LANGS
    assert all(len(docs) == 3 for docs in texts.values())


def test_splits_are_disjoint():
    n = 200
    for lang in ("latn", "hang"):
        docs = {split: set(sb.generate(split, [lang], n_docs=n)[lang]) for split in sb.SPLITS}
        assert all(len(d) == n for d in docs.values()), "documents repeat within a split"
        assert not docs["train"] & docs["importance"]
        assert not docs["train"] & docs["eval"]
        assert not docs["importance"] & docs["eval"]


def test_eval_is_parallel_and_train_is_not():
    ev = sb.generate("eval", langs=ALL, n_docs=30)
    for i in range(30):
        expected = concepts("latn", ev["latn"][i])
        assert sum(expected.values()) >= 9  # 3+ sentences of subject, verb, object
        for lang in ALL:
            assert concepts(lang, ev[lang][i]) == expected, (lang, i)
            assert ev[lang][i].count(sb.LANGUAGES[lang].stop) == ev["latn"][i].count(".")
    tr = sb.generate("train", langs=["latn", "cyrl"], n_docs=10)
    differ = sum(concepts("latn", a) != concepts("cyrl", b) for a, b in zip(tr["latn"], tr["cyrl"],
                                                                            strict=True))
    assert differ == 10


def test_rendering_reads_back_to_the_semantic_draw():
    doc = sb.documents("eval", 1, seed=5)[0]
    want = Counter()
    for s in doc:
        want.update([("noun", s.subj.noun), ("verb", s.verb), ("noun", s.obj.noun)])
        want.update(("adj", np.adj) for np in (s.subj, s.obj, s.place) if np and np.adj is not None)
        if s.place:
            want.update([("noun", s.place.noun), ("prep", s.prep)])
    for lang in ALL:
        assert concepts(lang, sb.render_document(doc, lang)) == want


def test_each_language_writes_only_its_own_script():
    shared = set(" .")
    for lang, spec in sb.LANGUAGES.items():
        chars = set("".join(sb.generate("train", [lang], n_docs=100)[lang]))
        chars |= set("".join(p["bad"] for p in sb.minimal_pairs(lang, 30)))
        foreign = {c for c in chars - shared - {spec.stop}
                   if not unicodedata.name(c, "").startswith(spec.script)}
        assert not foreign, (lang, sorted(foreign))
        assert len(chars - shared) >= 10


def test_documents_are_paragraphs_of_3_to_6_sentences():
    for doc in sb.generate("importance", ["deva"], n_docs=50)["deva"]:
        assert 3 <= doc.count("।") <= 6


def test_concepts_are_zipf_distributed():
    counts = Counter(s.subj.noun for d in sb.documents("train", 400, lang="latn") for s in d)
    ranked = [counts[i] for i in range(sb.N_AGENTS)]
    assert ranked[0] > 5 * ranked[-1] and ranked[0] > ranked[1] > ranked[10]


@pytest.mark.parametrize("lang", ALL)
def test_verb_agrees_with_subject_number(lang):
    sent = sb.documents("eval", 1)[0][0]
    sg = replace(sent, subj=replace(sent.subj, plural=False), past=False)
    pl = replace(sent, subj=replace(sent.subj, plural=True), past=False)
    verb_sg = sb.verb_words(sb.LANGUAGES[lang], sb.lexicon(lang), sent.verb, False, False)
    verb_pl = sb.verb_words(sb.LANGUAGES[lang], sb.lexicon(lang), sent.verb, False, True)
    assert verb_sg != verb_pl
    assert sb.render_sentence(sg, lang) != sb.render_sentence(pl, lang)


def test_lexicons_differ_between_languages():
    words = {lang: set(sb.word_forms(lang)) for lang in ALL}
    for a in ALL:
        for b in ALL:
            if a < b:
                assert not words[a] & words[b]


@pytest.mark.parametrize("lang", ["latn", "hang", "deva", "hebr"])
def test_minimal_pairs(lang):
    pairs = sb.minimal_pairs(lang, 60, seed=1)
    assert pairs == sb.minimal_pairs(lang, 60, seed=1)
    assert Counter(p["kind"] for p in pairs) == dict.fromkeys(sb.PAIR_KINDS, 20)
    for p in pairs:
        good, bad = p["good"].split(), p["bad"].split()
        assert good != bad
        if p["kind"] == "agreement":  # exactly one word (the verb) changes
            assert len(good) == len(bad) and sum(g != b for g, b in zip(good, bad,
                                                                         strict=True)) == 1
        else:  # a reordering: the same words
            assert Counter(w.removesuffix(sb.LANGUAGES[lang].stop) for w in good) == Counter(
                w.removesuffix(sb.LANGUAGES[lang].stop) for w in bad)
    # The good sentences are what the generator itself writes; pairs come from their own stream.
    train = " ".join(sb.generate("train", [lang], n_docs=50)[lang])
    assert sum(p["good"] in train for p in pairs) < 10


def test_bad_input_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown sandbox split 'dev'.*choices: eval, importance"):
        sb.generate("dev")
    with pytest.raises(ValueError, match=r"did you mean 'latn'"):
        sb.generate("eval", langs=["lat"])
    with pytest.raises(ValueError, match=r"unknown sandbox language 'xx'"):
        sb.minimal_pairs("xx", 3)
    with pytest.raises(ValueError, match="n_docs -1"):
        sb.generate("eval", n_docs=-1)
