"""What the model writes (`eval.generation.enabled=true`): greedy continuations of held-out
prompts per language, the language each continuation is written in, and how repetitive it is.

    identify = identifier(run.data.source, langs, min_confidence)    # text -> language or "und"
    texts = continuations(model, tok, eval_texts, prompt_tokens=16, new_tokens=32, docs=32)
    rows = identified(texts, identify)     # {lang: [{"prompt", "text", "lang", "distinct2"}]}
    metrics = generation_metrics(rows)     # gen/lang_match/<lang>, gen/wrong_lang/<lang>, ...
    table = before_after(base_rows, rows, per_lang=4)   # the run's MLflow table artifact

Perplexity says how likely the reference text is; the negative results of the field turn on what
the model writes instead (a removal that keeps perplexity but writes the wrong language, or
degenerate "tet tet tet"). A prompt is the first `prompt_tokens` tokens of an evaluation document
(after the prefix token the perplexity evaluator also uses); its continuation is `new_tokens`
greedy tokens. Every prompt has the same length, so a batch needs no padding and each
continuation is exactly what the model writes after its prompt alone.

The language of a continuation: on the sandbox exactly, by its lexicon (`sandbox.lexicon.
identify`: no two sandbox languages share a letter); on natural text with py3langid (optional:
`pip install 'py3langid>=0.4,<0.5'`), restricted to the run's languages plus its "not a
language" class `zxx` (read as "und"), abstaining ("und") below
`eval.generation.min_confidence`. A continuation
is judged on its words from the one the prompt ends in (completed by the continuation) on, so a
word cut at the prompt's edge is read whole. `gen/lang_match` is the share identified as the
prompt's language, `gen/wrong_lang` the share identified as another language ("und" is neither),
`gen/distinct2` the share of distinct word bigrams (1: no repetition; "tet tet tet" is 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from regionbench.common import names

INSTALL = "pip install 'py3langid>=0.4,<0.5'"  # the `langid` extra: pip install -e '.[langid]'
Identify = Callable[[str], str]


def check(gen, *, natural: bool, langs: Sequence[str] = ()) -> None:
    """`eval.generation.*`, before any model work; on natural text, that the identifier is
    installed and knows every language."""
    for key in ("prompt_tokens", "new_tokens", "docs", "batch_size"):
        value = getattr(gen, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"eval.generation.{key} {value!r} must be an integer >= 1")
    rows = gen.table_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"eval.generation.table_rows {rows!r} must be an integer >= 0")
    if not (isinstance(gen.min_confidence, int | float) and 0 <= gen.min_confidence < 1):
        raise ValueError(
            f"eval.generation.min_confidence {gen.min_confidence!r} must be a number in [0, 1)"
        )
    if natural and gen.enabled:
        natural_identifier(langs, gen.min_confidence)


def natural_identifier(langs: Sequence[str], min_confidence: float) -> Identify:
    """py3langid restricted to `langs` (ISO 639-1 codes) and `zxx`; one-line errors when it is
    not installed or does not know a language."""
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise ValueError(
            "eval.generation on natural text identifies the language of each continuation with "
            f"py3langid, which is not installed: {INSTALL}"
        ) from None
    lid = LanguageIdentifier.from_model_file(
        MODEL_FILE, norm_probs=True, min_confidence=min_confidence
    )
    try:
        lid.set_languages([*langs, "zxx"])
    except ValueError as err:
        raise ValueError(
            f"eval.generation: py3langid does not know a language of {list(langs)} ({err}); "
            "it takes ISO 639-1 codes"
        ) from None

    def identify(text: str) -> str:
        found = lid.classify(text)[0]
        return "und" if found == "zxx" else found  # not a language: neither match nor wrong

    return identify


def identifier(identify: Identify | None, langs: Sequence[str], min_confidence: float) -> Identify:
    """The data source's own identifier (`Source.identify`), else py3langid."""
    return identify or natural_identifier(langs, min_confidence)


def continuations(
    model,
    tok,
    texts: Mapping[str, Sequence[str]],
    *,
    prompt_tokens: int,
    new_tokens: int,
    docs: int,
    batch_size: int = 16,
) -> dict[str, list[tuple[str, str]]]:
    """{lang: [(prompt, continuation), ...]}: the first `docs` documents of each language with more
    than `prompt_tokens` tokens, their first `prompt_tokens` tokens continued greedily."""
    import torch

    from regionbench.common.packing import prefix_token_id

    prefix = prefix_token_id(tok)
    device = next(model.parameters()).device
    eos = tok.eos_token_id
    out: dict[str, list[tuple[str, str]]] = {}
    was_training = model.training
    model.eval()
    try:
        for lang, documents in texts.items():
            ids = tok(list(documents), add_special_tokens=False)["input_ids"]
            prompts = [d[:prompt_tokens] for d in ids if len(d) > prompt_tokens][:docs]
            out[lang] = []
            for i in range(0, len(prompts), batch_size):
                batch = torch.tensor(
                    [[prefix, *p] for p in prompts[i : i + batch_size]], device=device
                )
                with torch.no_grad():
                    generated = model.generate(
                        input_ids=batch,
                        attention_mask=torch.ones_like(batch),
                        max_new_tokens=new_tokens,
                        do_sample=False,
                        num_beams=1,
                        eos_token_id=eos,
                        pad_token_id=eos if eos is not None else 0,
                    )
                for prompt, row in zip(
                    prompts[i : i + batch_size], generated.tolist(), strict=True
                ):
                    new = row[len(prompt) + 1 :]
                    if eos is not None and eos in new:
                        new = new[: new.index(eos)]
                    out[lang].append(_split(tok, prompt, new))
    finally:
        model.train(was_training)
    return out


def _split(tok, prompt: list[int], new: list[int]) -> tuple[str, str]:
    """(prompt, continuation) as text, cut between whole characters: a byte-level BPE prompt can
    end inside a character, which the continuation completes (that character goes with it); a
    character the last new token leaves unfinished is dropped."""
    whole = tok.decode(prompt + new).rstrip("\ufffd")  # new tokens that end inside a character
    head = tok.decode(prompt).rstrip("\ufffd")
    if not whole.startswith(head):  # a decoder that does not work byte by byte
        return tok.decode(prompt), tok.decode(new)
    return head, whole[len(head) :]


def judged_text(prompt: str, text: str) -> str:
    """The continuation from the start of the word the prompt ends in (when the prompt ends
    inside a word, that word is read whole)."""
    cut = len(prompt) - len(prompt.split()[-1]) if prompt and not prompt[-1].isspace() else None
    return text if cut is None else prompt[cut:] + text


def distinct2(text: str) -> float:
    """Distinct word bigrams / word bigrams (1.0 with fewer than two words)."""
    words = text.split()
    pairs = list(zip(words, words[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def identified(
    texts: Mapping[str, Sequence[tuple[str, str]]], identify: Identify
) -> dict[str, list[dict]]:
    """{lang: [{"prompt", "text", "lang", "distinct2"}, ...]}: each continuation with the language
    it is written in and its repetition."""
    return {
        lang: [
            {
                "prompt": prompt,
                "text": text,
                "lang": identify(judged_text(prompt, text)),
                "distinct2": distinct2(text),
            }
            for prompt, text in pairs
        ]
        for lang, pairs in texts.items()
    }


def generation_metrics(rows: Mapping[str, Sequence[Mapping]]) -> dict[str, float]:
    """`gen/lang_match/<lang>`, `gen/wrong_lang/<lang>`, `gen/distinct2/<lang>` and their means."""
    shares = {}
    for lang, found in rows.items():
        if not found:
            continue
        n = len(found)
        shares[lang] = {
            "lang_match": sum(r["lang"] == lang for r in found) / n,
            "wrong_lang": sum(r["lang"] not in (lang, "und") for r in found) / n,
            "distinct2": sum(r["distinct2"] for r in found) / n,
        }
    return names.generation_metrics(shares)


def before_after(
    base: Mapping[str, Sequence[Mapping]], now: Mapping[str, Sequence[Mapping]], per_lang: int
) -> dict[str, list]:
    """The first `per_lang` prompts of each language with the unmodified model's continuation and
    this model's, as columns (`mlflow.log_table`'s layout)."""
    columns = ("lang", "prompt", "before", "before_lang", "after", "after_lang")
    table: dict[str, list] = {c: [] for c in columns}
    for lang, rows in now.items():
        for old, new in list(zip(base.get(lang, ()), rows, strict=False))[:per_lang]:
            values = (lang, new["prompt"], old["text"], old["lang"], new["text"], new["lang"])
            for column, value in zip(columns, values, strict=True):
                table[column].append(value)
    return table
