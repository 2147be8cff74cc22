"""Generation evaluation: the continuations are the model's own greedy tokens after each prompt
(checked against a token-by-token argmax loop), cut between whole characters; the sandbox
identifier reads every language's documents as that language and nonsense as "und"; the shares
and the before/after table follow their definitions; py3langid names natural languages."""

from __future__ import annotations

import builtins

import pytest
import torch

from regionbench import sandbox
from regionbench.config import GenerationConfig
from regionbench.evaluation import generation


@pytest.fixture(scope="module")
def sandbox_test(sandbox_test_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sandbox_test_dir).eval()
    return model, AutoTokenizer.from_pretrained(sandbox_test_dir)


def greedy(model, prefix: int, prompt: list[int], n: int, eos: int) -> list[int]:
    ids = [prefix, *prompt]
    new = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if token == eos:
                break
            ids.append(token)
            new.append(token)
    return new


def test_continuations_are_the_models_greedy_tokens(sandbox_test):
    model, tok = sandbox_test
    texts = sandbox.generate("eval", ["latn", "hang", "deva"], 5)
    out = generation.continuations(
        model, tok, texts, prompt_tokens=7, new_tokens=9, docs=4, batch_size=3
    )
    assert {lang: len(pairs) for lang, pairs in out.items()} == {"latn": 4, "hang": 4, "deva": 4}
    for lang, pairs in out.items():
        ids = tok(texts[lang], add_special_tokens=False)["input_ids"]
        for (prompt_text, text), doc in zip(pairs, ids, strict=False):
            prompt = doc[:7]
            new = greedy(model, tok.bos_token_id, prompt, 9, tok.eos_token_id)
            whole = tok.decode(prompt + new)
            assert prompt_text + text == whole.rstrip("\ufffd")  # nothing lost or doubled
            assert tok.decode(prompt).startswith(prompt_text)  # a cut character moves on
            assert "\ufffd" not in prompt_text and not text.endswith("\ufffd")
            assert texts[lang][ids.index(doc)].startswith(prompt_text)
    assert not model.training


def test_the_sandbox_identifier_is_exact():
    docs = sandbox.generate("eval", list(sandbox.LANGUAGES), 30)
    for lang, texts in docs.items():
        assert [sandbox.identify(t) for t in texts] == [lang] * 30
        words = texts[0].split()
        assert sandbox.identify(" ".join(words[:3])) == lang  # a few words suffice
        assert sandbox.identify(texts[0].replace(" ", "")) == "und"  # letters of no word
    assert sandbox.identify("") == sandbox.identify("1234 !!") == "und"
    latn, cyrl = docs["latn"][0].split(), docs["cyrl"][0].split()
    assert sandbox.identify(" ".join(latn[:2] + cyrl[:5])) == "cyrl"  # the majority's
    assert sandbox.identify(" ".join(latn[:3] + cyrl[:3]), min_share=0.6) == "und"


def test_a_word_cut_at_the_prompts_edge_is_read_whole():
    assert generation.judged_text("vu sa", "ra. vu") == "sara. vu"
    assert generation.judged_text("vu sara ", "vu") == "vu"
    assert generation.judged_text("", "vu") == "vu"


def test_shares_and_repetition_follow_their_definitions():
    assert generation.distinct2("tet tet tet") == 0.5  # (tet, tet) twice
    assert generation.distinct2("a b c a b") == 0.75  # ab bc ca ab: 3 distinct of 4
    assert generation.distinct2("a") == 1.0
    rows = {
        "latn": [{"lang": "latn", "distinct2": 1.0}] * 3 + [{"lang": "und", "distinct2": 0.5}],
        "cyrl": [{"lang": "latn", "distinct2": 1.0}, {"lang": "cyrl", "distinct2": 0.0}],
    }
    m = generation.generation_metrics(rows)
    assert m["gen/lang_match/latn"] == 0.75 and m["gen/wrong_lang/latn"] == 0.0
    assert m["gen/lang_match/cyrl"] == 0.5 and m["gen/wrong_lang/cyrl"] == 0.5
    assert m["gen/distinct2/latn"] == 3.5 / 4 and m["gen/distinct2/cyrl"] == 0.5
    assert m["gen/lang_match/mean"] == 0.625 and m["gen/wrong_lang/mean"] == 0.25


def test_the_table_pairs_each_prompt_before_and_after():
    row = lambda p, t, lang: {"prompt": p, "text": t, "lang": lang}  # noqa: E731
    base = {"latn": [row("a", "b", "latn"), row("c", "d", "latn"), row("e", "f", "latn")]}
    now = {"latn": [row("a", "x", "und"), row("c", "y", "latn"), row("e", "z", "latn")]}
    table = generation.before_after(base, now, per_lang=2)
    assert table == {
        "lang": ["latn", "latn"],
        "prompt": ["a", "c"],
        "before": ["b", "d"],
        "before_lang": ["latn", "latn"],
        "after": ["x", "y"],
        "after_lang": ["und", "latn"],
    }


def test_bad_settings_are_one_line_errors():
    generation.check(GenerationConfig(), natural=False)
    for key, value in (("prompt_tokens", 0), ("docs", True), ("new_tokens", 1.5)):
        with pytest.raises(ValueError, match=f"eval.generation.{key} .* integer >= 1"):
            generation.check(GenerationConfig(**{key: value}), natural=False)
    with pytest.raises(ValueError, match="table_rows -1"):
        generation.check(GenerationConfig(table_rows=-1), natural=False)
    with pytest.raises(ValueError, match=r"min_confidence 1.0 must be a number in \[0, 1\)"):
        generation.check(GenerationConfig(min_confidence=1.0), natural=False)


def test_natural_text_needs_py3langid_named_by_its_install_command(monkeypatch):
    real = builtins.__import__

    def without(name, *args, **kw):
        if name.startswith("py3langid"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(ValueError, match=r"py3langid, which is not installed: pip install"):
        generation.check(GenerationConfig(enabled=True), natural=True, langs=["en"])
    generation.check(GenerationConfig(enabled=False), natural=True, langs=["en"])  # not asked


def test_py3langid_names_natural_languages_and_abstains_on_digits():
    pytest.importorskip("py3langid")
    identify = generation.natural_identifier(["en", "de", "fr"], 0.5)
    assert identify("The cat sat on the mat and looked out of the window.") == "en"
    assert identify("Die Katze sitzt auf der Matte und schaut aus dem Fenster.") == "de"
    assert identify("Le chat est assis sur le tapis et regarde par la fenêtre.") == "fr"
    assert identify("1234 5678") == "und"
    with pytest.raises(ValueError, match="py3langid does not know a language of"):
        generation.natural_identifier(["en", "latn"], 0.5)
