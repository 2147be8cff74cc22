"""The sandbox corpus: determinism, disjoint splits, parallel eval, scripts, grammar, pairs.

Minimal pairs are checked against `grammatical`, a brute-force recognizer written here from the
grammar's definition (`render_sentence`) alone, independent of the generator's `readings`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from collections import Counter
from dataclasses import replace
from itertools import combinations, permutations, product

import pytest

from regionbench.sandbox import corpus, grammar, languages, meaning
from regionbench.sandbox import lexicon as lx

ALL = list(languages.LANGUAGES)
word_forms = functools.cache(lx.word_forms)


def concepts(lang: str, doc: str) -> Counter:
    """Read a rendering back into its content concepts (category, id), ignoring word order."""
    forms = word_forms(lang)
    stop = languages.LANGUAGES[lang].stop
    words = [w.removesuffix(stop) for w in doc.split()]
    return Counter(forms[w] for w in words if w in forms)


ROLES = ("subj", "obj", "place")


def _probe(np: meaning.NounPhrase, role: str) -> meaning.Sentence:
    filler = meaning.NounPhrase(1 if np.noun == 0 else 0, plural=False, definite=False)
    if role == "place":
        return meaning.Sentence(filler, 0, False, filler, prep=0, place=np)
    return meaning.Sentence(
        np if role == "subj" else filler, 0, False, np if role == "obj" else filler
    )


@functools.cache
def noun_readings(lang: str) -> dict[str, set[tuple]]:
    """Surface noun word -> {(noun, plural, definite, role)}, read off rendered probe sentences."""
    forms, stop = word_forms(lang), languages.LANGUAGES[lang].stop
    table: dict[str, set[tuple]] = {}
    for noun, plural, definite, role in product(
        range(meaning.N_NOUNS), (False, True), (False, True), ROLES
    ):
        text = corpus.render_sentence(
            _probe(meaning.NounPhrase(noun, plural, definite), role), lang
        )
        (word,) = [w for w in text.removesuffix(stop).split(" ") if forms.get(w) == ("noun", noun)]
        table.setdefault(word, set()).add((noun, plural, definite, role))
    return table


def grammatical(text: str, lang: str) -> bool:
    """Does any Sentence render to exactly `text`?  Brute force over the words present.

    Every noun phrase writes one noun word, every adjective one adjective word, and the verb and
    preposition one word each, so a reading uses the nouns present in some assignment to subject,
    object and place (with any features that write each noun's form in that role), attaches the
    adjectives present to any noun phrases, and takes a verb and preposition present, past or not.
    """
    forms, stop = word_forms(lang), languages.LANGUAGES[lang].stop
    if not text.endswith(stop):
        return False
    words = text.removesuffix(stop).split(" ")
    found = {
        cat: [i for w in words if forms.get(w, ("", 0))[0] == cat for i in [forms[w][1]]]
        for cat in ("noun", "verb", "adj", "prep")
    }
    nouns = [w for w in words if forms.get(w, ("", 0))[0] == "noun"]
    adjs = sorted(found["adj"])
    if len(nouns) not in (2, 3):
        return False
    table = noun_readings(lang)
    for heads in set(permutations(nouns)):
        options = [
            [r for r in table[w] if r[3] == role] for w, role in zip(heads, ROLES, strict=False)
        ]
        for feats in product(*options):
            for attach in product([None, *set(adjs)], repeat=len(feats)):
                if sorted(a for a in attach if a is not None) != adjs:
                    continue
                nps = [
                    meaning.NounPhrase(n, pl, df, a)
                    for (n, pl, df, _), a in zip(feats, attach, strict=True)
                ]
                place = nps[2] if len(nps) == 3 else None
                for verb, past, prep in product(
                    set(found["verb"]), (False, True), set(found["prep"]) if place else [None]
                ):
                    sent = meaning.Sentence(nps[0], verb, past, nps[1], prep, place)
                    if corpus.render_sentence(sent, lang) == text:
                        return True
    return False


def test_language_inventory():
    assert len(languages.PRETRAIN_LANGS) >= 6 and len(languages.HELDOUT_LANGS) >= 2
    assert not set(languages.PRETRAIN_LANGS) & set(languages.HELDOUT_LANGS)
    assert set(languages.PRETRAIN_LANGS) | set(languages.HELDOUT_LANGS) == set(languages.LANGUAGES)
    specs = [languages.LANGUAGES[code] for code in languages.PRETRAIN_LANGS]
    assert {s.order for s in specs} == {"SVO", "SOV", "VSO"}
    assert {s.adj for s in specs} == {"pre", "post"}
    assert len({s.script for s in languages.LANGUAGES.values()}) == len(languages.LANGUAGES)
    assert all(code == code.lower() and len(code) <= 4 for code in languages.LANGUAGES)


def test_same_seed_gives_identical_bytes_and_prefixes():
    a = corpus.generate("train", langs=ALL, n_docs=20, seed=3)
    b = corpus.generate("train", langs=ALL, n_docs=20, seed=3)
    assert repr(a).encode() == repr(b).encode()
    short = corpus.generate("train", langs=ALL, n_docs=5, seed=3)
    assert all(short[lang] == a[lang][:5] for lang in ALL)
    assert corpus.generate("train", langs=["latn"], n_docs=20, seed=4)["latn"] != a["latn"]


def test_default_languages_and_sizes():
    texts = corpus.generate("eval", n_docs=3)
    assert tuple(texts) == languages.PRETRAIN_LANGS
    assert all(len(docs) == 3 for docs in texts.values())


def test_splits_are_disjoint():
    n = 200
    for lang in ("latn", "hang"):
        docs = {
            split: set(corpus.generate(split, [lang], n_docs=n)[lang]) for split in corpus.SPLITS
        }
        assert all(len(d) == n for d in docs.values()), "documents repeat within a split"
        assert not docs["train"] & docs["importance"]
        assert not docs["train"] & docs["eval"]
        assert not docs["importance"] & docs["eval"]
        for a, b in combinations(corpus.SPLITS, 2):
            assert not docs[a] & docs[b], (lang, a, b)


def test_pretrain_split_is_the_text_sandbox_models_were_built_on():
    # sha256 of the "train" split before "pretrain" took its streams (CORPUS_VERSION 2): models
    # built then stay valid only while this text is byte-identical.
    texts = corpus.generate("pretrain", langs=ALL, n_docs=5)
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False, sort_keys=True).encode())
    assert digest.hexdigest() == "66ac1d612960f7e62b085b30aa535bece34da78f1e93f968c54ff745f8b5c353"
    assert meaning.CORPUS_VERSION == 2
    assert corpus.DEFAULT_DOCS["pretrain"] >= 3000  # the largest recipe's train_docs


def test_further_training_text_is_new_to_the_sandbox_models():
    pretrain = set(corpus.generate("pretrain", ["latn"], n_docs=3000)["latn"])
    train = corpus.generate("train", ["latn"], n_docs=2000)["latn"]
    assert len(set(train)) == 2000
    assert not pretrain.intersection(train)
    held = corpus.generate("train", list(languages.HELDOUT_LANGS), n_docs=50)
    for (
        lang
    ) in languages.HELDOUT_LANGS:  # the freeze study's new languages get further-training text too
        assert len(held[lang]) == 50
        assert not set(held[lang]) & set(corpus.generate("pretrain", [lang], n_docs=50)[lang])


def test_eval_is_parallel_and_train_is_not():
    ev = corpus.generate("eval", langs=ALL, n_docs=30)
    for i in range(30):
        expected = concepts("latn", ev["latn"][i])
        assert sum(expected.values()) >= 9  # 3+ sentences of subject, verb, object
        for lang in ALL:
            assert concepts(lang, ev[lang][i]) == expected, (lang, i)
            assert ev[lang][i].count(languages.LANGUAGES[lang].stop) == ev["latn"][i].count(".")
    tr = corpus.generate("train", langs=["latn", "cyrl"], n_docs=10)
    differ = sum(
        concepts("latn", a) != concepts("cyrl", b)
        for a, b in zip(tr["latn"], tr["cyrl"], strict=True)
    )
    assert differ == 10


def test_rendering_reads_back_to_the_semantic_draw():
    doc = corpus.documents("eval", 1, seed=5)[0]
    want = Counter()
    for s in doc:
        want.update([("noun", s.subj.noun), ("verb", s.verb), ("noun", s.obj.noun)])
        want.update(("adj", np.adj) for np in (s.subj, s.obj, s.place) if np and np.adj is not None)
        if s.place:
            want.update([("noun", s.place.noun), ("prep", s.prep)])
    for lang in ALL:
        assert concepts(lang, corpus.render_document(doc, lang)) == want


def test_each_language_writes_only_its_own_script():
    shared = set(" .")
    for lang, spec in languages.LANGUAGES.items():
        chars = set("".join(corpus.generate("train", [lang], n_docs=100)[lang]))
        chars |= set("".join(p["bad"] for p in grammar.minimal_pairs(lang, 30)))
        foreign = {
            c
            for c in chars - shared - {spec.stop}
            if not unicodedata.name(c, "").startswith(spec.script)
        }
        assert not foreign, (lang, sorted(foreign))
        assert len(chars - shared) >= 10


def test_documents_are_paragraphs_of_3_to_6_sentences():
    for doc in corpus.generate("importance", ["deva"], n_docs=50)["deva"]:
        assert 3 <= doc.count("।") <= 6


def test_concepts_are_zipf_distributed():
    counts = Counter(s.subj.noun for d in corpus.documents("train", 400, lang="latn") for s in d)
    ranked = [counts[i] for i in range(meaning.N_AGENTS)]
    assert ranked[0] > 5 * ranked[-1] and ranked[0] > ranked[1] > ranked[10]


@pytest.mark.parametrize("lang", ALL)
def test_verb_agrees_with_subject_number(lang):
    sent = corpus.documents("eval", 1)[0][0]
    sg = replace(sent, subj=replace(sent.subj, plural=False), past=False)
    pl = replace(sent, subj=replace(sent.subj, plural=True), past=False)
    verb_sg = lx.verb_words(languages.LANGUAGES[lang], lx.lexicon(lang), sent.verb, False, False)
    verb_pl = lx.verb_words(languages.LANGUAGES[lang], lx.lexicon(lang), sent.verb, False, True)
    assert verb_sg != verb_pl
    assert corpus.render_sentence(sg, lang) != corpus.render_sentence(pl, lang)


def test_lexicons_differ_between_languages():
    words = {lang: set(lx.word_forms(lang)) for lang in ALL}
    for a in ALL:
        for b in ALL:
            if a < b:
                assert not words[a] & words[b]


@pytest.mark.parametrize("lang", ["latn", "hang", "deva", "hebr"])
def test_minimal_pairs(lang):
    pairs = grammar.minimal_pairs(lang, 60, seed=1)
    assert pairs == grammar.minimal_pairs(lang, 60, seed=1)
    assert Counter(p["kind"] for p in pairs) == dict.fromkeys(grammar.PAIR_KINDS, 20)
    for p in pairs:
        good, bad = p["good"].split(), p["bad"].split()
        assert good != bad
        if p["kind"] == "agreement":  # exactly one word (the verb) changes
            assert (
                len(good) == len(bad) and sum(g != b for g, b in zip(good, bad, strict=True)) == 1
            )
        else:  # a reordering: the same words
            assert Counter(w.removesuffix(languages.LANGUAGES[lang].stop) for w in good) == Counter(
                w.removesuffix(languages.LANGUAGES[lang].stop) for w in bad
            )
    # The good sentences are what the generator itself writes; pairs come from their own stream.
    train = " ".join(corpus.generate("train", [lang], n_docs=50)[lang])
    assert sum(p["good"] in train for p in pairs) < 10


def test_oracle_sees_other_meanings():
    # The oracle must find the reading the generator once missed, or "bad is ungrammatical" says
    # nothing: in Hangul (SOV, adjective first) the subject's adjective moved behind its noun reads
    # as the object's.
    np = meaning.NounPhrase
    sent = meaning.Sentence(np(3, False, False, adj=2), 4, False, np(40, False, False))
    moved = corpus.render_sentence(sent, "hang", adj_side="post")
    other = meaning.Sentence(np(3, False, False), 4, False, np(40, False, False, adj=2))
    assert moved == corpus.render_sentence(other, "hang") and grammatical(moved, "hang")
    # Latin (SVO, unmarked object): object-verb-subject is subject and object swapped.
    swapped = corpus.render_sentence(sent, "latn", order="OVS")
    assert grammatical(swapped, "latn")
    assert swapped == corpus.render_sentence(replace(sent, subj=sent.obj, obj=sent.subj), "latn")
    for lang in ALL:
        for s in corpus.documents("eval", 3, seed=2)[0]:
            text = corpus.render_sentence(s, lang)
            assert grammatical(text, lang)
            assert not grammatical(text.replace(" ", "  ", 1), lang)
            stop, forms = languages.LANGUAGES[lang].stop, lx.word_forms(lang)
            words = text.removesuffix(stop).split()
            verbless = [w for w in words if forms.get(w, ("",))[0] != "verb"]
            assert len(verbless) < len(words) and not grammatical(" ".join(verbless) + stop, lang)


def test_readings_agree_with_the_oracle():
    for lang in ALL:
        for s in corpus.documents("eval", 4, seed=3)[1]:
            s = replace(s, subj=replace(s.subj, adj=7))
            texts = {corpus.render_sentence(s, lang, agree_plural=not s.subj.plural)}
            texts |= {corpus.render_sentence(s, lang, order=o) for o in languages.ORDERS}
            texts |= {
                corpus.render_sentence(s, lang, adj_side=side, adj_role=role)
                for side in ("pre", "post")
                for role in "SOP"
            }
            for text in texts:
                found = grammar.readings(text, lang)
                assert bool(found) == grammatical(text, lang), (lang, text)
                assert all(corpus.render_sentence(r, lang) == text for r in found)
            if languages.LANGUAGES[lang].article != "none":  # else read as indefinite
                assert s in grammar.readings(corpus.render_sentence(s, lang), lang)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lang", ALL)
def test_every_bad_pair_is_ungrammatical_under_every_reading(lang, seed):
    pairs = grammar.minimal_pairs(lang, 90, seed=seed)
    assert [p["kind"] for p in pairs] == [grammar.PAIR_KINDS[i % 3] for i in range(90)]
    for p in pairs:
        assert grammatical(p["good"], lang), p
    wrong = Counter(p["kind"] for p in pairs if grammatical(p["bad"], lang))
    assert not wrong, f"{lang}: bad sentences that read as another meaning: {dict(wrong)}"


@pytest.mark.parametrize("seed", [0, 1])
def test_pair_meanings_are_parallel_across_languages(seed):
    pairs = {lang: grammar.minimal_pairs(lang, 90, seed=seed) for lang in ALL}
    for i in range(90):
        want = concepts("latn", pairs["latn"][i]["good"])
        for lang in ALL:
            assert concepts(lang, pairs[lang][i]["good"]) == want, (lang, i)
            assert concepts(lang, pairs[lang][i]["bad"]) == want, (lang, i)


def test_minimal_pairs_redraw_a_meaning_without_a_visible_violation(monkeypatch):
    real, calls = grammar._violations, []

    def first_draw_shows_nothing(sent, lang, kind, rng):
        calls.append(sent)
        if len(calls) == 1:  # offer only the grammatical sentence itself
            yield corpus.render_sentence(sent, lang)
        else:
            yield from real(sent, lang, kind, rng)

    monkeypatch.setattr(grammar, "_violations", first_draw_shows_nothing)
    (pair,) = grammar.minimal_pairs("latn", 1)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert pair["good"] == corpus.render_sentence(calls[1], "latn")
    assert not grammatical(pair["bad"], "latn")
    monkeypatch.setattr(grammar, "_violations", lambda sent, lang, kind, rng: iter(()))
    with pytest.raises(RuntimeError, match="no ungrammatical agreement pair for latn"):
        grammar.minimal_pairs("latn", 1)


def test_bad_input_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown sandbox split 'dev'.*choices: eval, importance"):
        corpus.generate("dev")
    with pytest.raises(ValueError, match=r"did you mean 'latn'"):
        corpus.generate("eval", langs=["lat"])
    with pytest.raises(ValueError, match=r"unknown sandbox language 'xx'"):
        grammar.minimal_pairs("xx", 3)
    with pytest.raises(ValueError, match="n_docs -1"):
        corpus.generate("eval", n_docs=-1)
    with pytest.raises(ValueError, match=r"unknown sandbox language 'xx'"):
        grammar.readings("x.", "xx")
