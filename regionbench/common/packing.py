"""Documents into fixed-length token windows: the one packing rule of regionbench.

    windows = pack(tokenizer, docs, seq_len=512, n_windows=10_000)    # [10000, 512] int64
    windows = pack(tokenizer, docs, seq_len=128, seed=0)               # all windows, docs shuffled

Every document becomes [BOS] tokens [EOS] (tokenized without the tokenizer's own special tokens,
so its add_special_tokens policy cannot change anything; a tokenizer whose BOS and EOS are one
token, like GPT-2's <|endoftext|>, separates documents with it once), the documents are
concatenated and the stream is cut into `seq_len` windows; an incomplete tail is dropped, as in
Hugging Face's run_clm `group_texts`. Importance scoring reads a fixed number of windows per
language ("samples", as in the paper's 10,000 samples of 512 tokens), so every language weighs
the same whatever its amount of text; freeze training reads them shuffled.

Documents are tokenized lazily in chunks, so `n_windows` from a streamed corpus reads only the
documents it needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

_CHUNK = 256  # documents tokenized per call: fast batch encoding, little over-reading


def prefix_token_id(tokenizer) -> int:
    """The token a document is conditioned on when scored alone: BOS, else EOS (some families,
    GPT-2 and Qwen among them, only have an EOS, which plays the "start of text" role for them;
    lm-eval's HFLM makes the same choice)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to condition on")
    return token


def separators(tokenizer) -> tuple[list[int], list[int]]:
    """(ids before, ids after) each document: [BOS] and [EOS], once where they are one token."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None and eos is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to separate documents")
    head = [bos] if bos is not None and bos != eos else []
    tail = [eos] if eos is not None else []
    return head, tail


def encode(tokenizer, docs: list[str]) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    if not docs:
        return []
    # verbose=False: documents longer than the model's context are expected; they get cut.
    return tokenizer(list(docs), add_special_tokens=False, verbose=False)["input_ids"]


def pack(
    tokenizer,
    docs: Iterable[str],
    seq_len: int,
    *,
    n_windows: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """`[n, seq_len]` int64 windows of the packed documents.

    `n_windows`: stop once that many windows are full (reading no further documents); fewer is
    an error naming how many the text gives. `seed`: shuffle the documents first (seeded; needs
    them all, so not together with `n_windows`).
    """
    seq_len = int(seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len!r} is too small: a window must predict >= 1 token")
    if n_windows is not None and (isinstance(n_windows, bool) or int(n_windows) < 1):
        raise ValueError(f"n_windows {n_windows!r} is not a positive integer")
    head, tail = separators(tokenizer)
    if seed is not None:
        if n_windows is not None:
            raise ValueError("pack: shuffling (seed) reads every document; drop n_windows")
        ids = encode(tokenizer, [d for d in docs])
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
        chunks: Iterator[list[list[int]]] = iter([[ids[i] for i in order]])
    else:
        chunks = (encode(tokenizer, chunk) for chunk in _chunked(docs, _CHUNK))
    need = None if n_windows is None else int(n_windows) * seq_len
    stream: list[int] = []
    for chunk in chunks:
        _extend(stream, chunk, head, tail)
        if need is not None and len(stream) >= need:
            break
    n = len(stream) // seq_len
    if need is not None and n < n_windows:
        raise ValueError(
            f"the text gives {n} windows of {seq_len} tokens, fewer than the {n_windows} asked for"
        )
    if n == 0:
        raise ValueError(f"the text gives {len(stream)} tokens, fewer than seq_len {seq_len}")
    n = n if n_windows is None else int(n_windows)
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def pack_ids(
    docs: Iterable[list[int]], seq_len: int, *, head: list[int], tail: list[int]
) -> torch.Tensor:
    """`pack` for documents that are token ids already (the sandbox pre-training loop)."""
    stream: list[int] = []
    _extend(stream, docs, head, tail)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _extend(stream: list[int], docs: Iterable[list[int]], head: list[int], tail: list[int]) -> None:
    for doc in docs:
        stream.extend(head)
        stream.extend(doc)
        stream.extend(tail)


def _chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
