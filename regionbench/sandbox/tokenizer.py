"""The sandbox tokenizer: byte-level BPE trained on the sandbox corpus, prepending <s> like
LLaMA's, as a `PreTrainedTokenizerFast` that saves and loads like any Hugging Face tokenizer."""

from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 as in LLaMA-style configs


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int):
    """Byte-level BPE as a `PreTrainedTokenizerFast` that prepends <s> like LLaMA's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # GPT-2's split regex cuts words at combining marks (Devanagari vowel signs are \p{M}), which
    # would keep BPE from ever merging a Devanagari syllable; split at spaces and punctuation only.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?[\p{L}\p{M}]+| ?[^\s\p{L}\p{M}]+|\s+"), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS[1]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        model_max_length=model_max_length,
    )
