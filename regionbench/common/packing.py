"""Documents into fixed-length token samples: the two packing rules of regionbench.

    windows = pack(tokenizer, docs, seq_len=512, n_windows=10_000)    # [10000, 512] int64
    windows = pack(tokenizer, docs, seq_len=128, seed=0)               # all windows, docs shuffled
    samples = pack_documents(tokenizer, docs, 512, n_samples=10_048, drop_long=True)
    outputs = model(**lm_inputs(samples[:8]))                          # padding masked out

`windows` (`pack`): every document becomes [BOS] tokens [EOS] (tokenized without the
tokenizer's own special tokens, so its add_special_tokens policy cannot change anything; a
tokenizer whose BOS and EOS are one token, like GPT-2's <|endoftext|>, separates documents with
it once), the documents are concatenated and the stream is cut into `seq_len` windows; an
incomplete tail is dropped, as in Hugging Face's run_clm `group_texts`.

`documents` (`pack_documents`): the authors' samples (their preprocess-llama.py and data
collator): one document per row, [BOS] tokens [EOS] (BOS, else EOS, first), cut after `seq_len`
tokens, or with `drop_long` left out when longer (their `split()` returns nothing for a document
over 512 tokens, BOS and EOS counted), and right-padded with `PAD`. `lm_inputs` turns a batch of
either kind into a causal LM's inputs: the padding gets attention mask 0 and label -100, so the
loss covers the document's tokens and its EOS, never the padding.

Importance scoring reads a fixed number of samples per language ("samples", as in the paper's
10,000 samples of 512 tokens), so every language weighs the same whatever its amount of text;
freeze training reads them shuffled. Documents are tokenized lazily in chunks, so a fixed number
of samples from a streamed corpus reads only the documents it needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

_CHUNK = 256  # documents tokenized per call: fast batch encoding, little over-reading
PAD = -1  # in `pack_documents` samples: a position after the document's end (never a token id)

PACKINGS = {
    "windows": "documents packed [BOS] text [EOS] and cut into full windows of seq_len tokens",
    "documents": "one document per sample, [BOS] text [EOS], cut at seq_len (or left out: "
    "drop_long), right-padded and the padding masked out of the loss (the authors')",
}


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


def pack_documents(
    tokenizer,
    docs: Iterable[str],
    seq_len: int,
    *,
    n_samples: int | None = None,
    drop_long: bool = False,
) -> torch.Tensor:
    """`[n, seq_len]` int64 samples, one document per row: [BOS] tokens [EOS], cut after
    `seq_len` tokens, or (`drop_long`) left out when longer, then right-padded with `PAD`.

    `n_samples`: stop once that many rows are kept (reading no further documents); fewer is an
    error naming how many the text gives. A document without tokens is no sample.
    """
    seq_len = int(seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len!r} is too small: a sample must predict >= 1 token")
    if n_samples is not None and (isinstance(n_samples, bool) or int(n_samples) < 1):
        raise ValueError(f"n_samples {n_samples!r} is not a positive integer")
    head = [prefix_token_id(tokenizer)]
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows: list[list[int]] = []
    read = 0
    for chunk in _chunked(docs, _CHUNK):
        for ids in encode(tokenizer, chunk):
            read += 1
            if not ids:
                continue
            row = [*head, *ids, *tail]
            if len(row) > seq_len:
                if drop_long:
                    continue
                row = row[:seq_len]
            rows.append(row)
            if n_samples is not None and len(rows) == n_samples:
                break
        if n_samples is not None and len(rows) == n_samples:
            break
    what = f"{len(rows)} documents" + (
        f" of at most {seq_len} tokens (of {read} read; longer ones are left out)"
        if drop_long
        else ""
    )
    if n_samples is not None and len(rows) < n_samples:
        raise ValueError(f"the text gives {what}, fewer than the {n_samples} asked for")
    if not rows:
        raise ValueError(f"the text gives {what}: no sample")
    out = torch.full((len(rows), seq_len), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def lm_inputs(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """The keyword arguments of a causal LM's forward (with its loss) for a batch of samples.

    Full windows go in as they are (`labels` = the ids; Hugging Face shifts them). A batch with
    padding (`pack_documents`) is cut to its longest row; the padding gets attention mask 0 and
    label -100, and id 0: it comes after every scored token and causal attention never reads
    forward, so its ids change nothing.
    """
    real = batch != PAD
    if bool(real.all()):
        return {"input_ids": batch, "labels": batch}
    width = int(real.sum(dim=1).max())
    batch, real = batch[:, :width], real[:, :width]
    return {
        "input_ids": batch.masked_fill(~real, 0),
        "attention_mask": real.long(),
        "labels": batch.masked_fill(~real, -100),
    }


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
