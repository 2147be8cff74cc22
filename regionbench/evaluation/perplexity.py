"""Per-language perplexity and bits-per-byte of a causal LM on held-out text.

    from regionbench.evaluation.perplexity import perplexity
    perplexity(model, tok, {"en": [...], "ru": [...]})  # {lang: LangPerplexity(ppl, bpb, ...)}

Each document is scored on its own, exactly as lm-eval's `loglikelihood_rolling` does (the
`word_perplexity`/`bits_per_byte` tasks such as wikitext): the tokens, without special tokens,
are preceded by one prefix token (BOS, or EOS where the tokenizer has no BOS) and cut into
disjoint windows of at most `max_length` tokens (default: the model's context length, resolved
exactly as lm-eval's HFLM does); every token is predicted once, and a window after the first
conditions on the `max_length` tokens before it. Unlike the harness, all windows of all languages
are batched together (sorted by length, right-padded), which is where the speed comes from (see
benchmarks/bench_perplexity.py), and the LM head and its fp32 log-softmax run only on the
trailing positions that hold a batch's scored tokens (transformers' `logits_to_keep`), not on
the context that the last window of a long document re-reads; a batch holds at most `batch_size` windows and at most
`batch_size * 2048` padded tokens, so long-context models score long documents a few at a time.
Called on every rank of a torch.distributed group, both functions share the batches among the
ranks and every rank gets one process's result, bit for bit (`regionbench.evaluation.ranks`).

Why bits per byte as well as perplexity: token-level perplexity depends on the tokenizer (a
language the vocabulary splits into many short tokens gets many easy predictions and a low
perplexity), so it cannot compare languages, scripts or model families. The summed negative
log-likelihood of a document is tokenizer-independent, and dividing it by the document's UTF-8
bytes gives a cost per unit of raw text that can be compared across all of them.

`paper_perplexity` is the other protocol, the authors' (the `evaluation()` of their released
scripts): documents of at most 512 tokens (BOS and EOS counted; longer ones left out, as their
preprocessing drops them), one per row, right-padded, in batches of 16; each batch's loss is the
mean NLL over its target tokens (the text and the EOS), and the perplexity is exp of the mean of
those batch losses. That is not exp(total NLL / total tokens): a batch of short documents weighs
as much as a batch of long ones, and the value depends on how documents are batched.

Each result also keeps its documents' own totals (`doc_nll`, `doc_tokens`, `doc_bytes`), because
documents, not tokens, are the independent units of the evaluation set: a bootstrap over them
(`regionbench.evaluation.intervals`) says how far a ratio to the unmodified model could move on other
documents of the same kind.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from regionbench.common.packing import lm_inputs, pack_documents, prefix_token_id
from regionbench.common.torchtools import modes_kept
from regionbench.evaluation import ranks

TOKENS_PER_ROW = 2048  # batch_size * this bounds a batch's padded tokens (and its logits)


@dataclass(frozen=True)
class LangPerplexity:
    """One language's result. `nll` is summed over every predicted token, in nats.

    The `doc_*` tuples hold the same three totals per document, in input order (a document with
    no tokens has nll 0.0); the language totals are their sums. Tuples of numbers, so
    `dataclasses.asdict` of a result is JSON. Printed, a result shows its totals only.
    """

    ppl: float  # exp(nll / tokens): token-level perplexity
    bpb: float  # nll / (ln 2 * bytes): bits per UTF-8 byte
    nll: float
    tokens: int  # predicted tokens (all tokens of all documents; the prefix token is not one)
    bytes: int  # UTF-8 bytes of all documents
    doc_nll: tuple[float, ...] = field(repr=False)
    doc_tokens: tuple[int, ...] = field(repr=False)
    doc_bytes: tuple[int, ...] = field(repr=False)


@dataclass(frozen=True)
class PaperPerplexity:
    """One language's perplexity under the authors' protocol (module docstring)."""

    ppl: float  # exp(mean of batch_loss)
    batch_loss: tuple[float, ...]  # each batch's mean NLL per target token, in nats
    docs: int  # documents scored: at most seq_len tokens with BOS and EOS
    dropped: int  # documents left out as longer


def default_max_length(model, tokenizer) -> int:
    """The model's context length exactly as lm-eval's HFLM resolves it (config, then the
    tokenizer's model_max_length, then 2048), so our windows are the harness's windows."""
    try:
        from lm_eval.models.utils import resolve_max_length
    except ImportError:  # lm-eval < 0.4.11: the same rule, inlined in HFLM.max_length
        config = getattr(model.config, "text_config", None) or model.config
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            if getattr(config, attr, None) is not None:
                return int(getattr(config, attr))
        limit = getattr(tokenizer, "model_max_length", None)
        return int(limit) if limit is not None and limit < 10**30 else 2048
    return resolve_max_length(model.config, tokenizer)


def document_windows(
    tokens: list[int], prefix: int, max_length: int
) -> list[tuple[list[int], int]]:
    """Per window, as lm-eval builds them: (context + predicted ids, number predicted).

    The model reads all ids but the last and is scored on the last `number predicted` of them.
    """
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    return [
        (context + target, len(target))
        for context, target in map(
            make_disjoint_window,
            get_rolling_token_windows(
                token_list=tokens, prefix_token=prefix, max_seq_len=max_length, context_len=1
            ),
        )
    ]


def perplexity(
    model,
    tokenizer,
    texts: dict[str, list[str]],
    *,
    max_length: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, LangPerplexity]:
    """Score every language's documents; see the module docstring for the exact protocol.

    `max_length` defaults to the model's context length (as lm-eval); `batch_size` counts windows
    per forward pass. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} is not a positive integer")
    max_length = default_max_length(model, tokenizer) if max_length is None else int(max_length)
    if max_length < 1:
        raise ValueError(f"max_length {max_length!r} is not a positive integer")
    prefix = prefix_token_id(tokenizer)
    langs = list(texts)

    # (document index over all languages, window ids, predicted count) for every window
    windows: list[tuple[int, list[int], int]] = []
    doc_tokens: list[int] = []
    doc_bytes: list[int] = []
    spans: dict[str, slice] = {}  # each language's document indices
    for lang in langs:
        docs = list(texts[lang])
        encoded = (
            tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"] if docs else []
        )
        start = len(doc_tokens)
        for doc, ids in zip(docs, encoded, strict=True):
            windows.extend(
                (len(doc_tokens), inp, n) for inp, n in document_windows(ids, prefix, max_length)
            )
            doc_tokens.append(len(ids))
            doc_bytes.append(len(doc.encode("utf-8")))
        spans[lang] = slice(start, len(doc_tokens))
        if sum(doc_tokens[start:]) == 0:
            raise ValueError(f"texts for language {lang!r} contain no tokens")

    doc_nll = _score_windows(model, windows, len(doc_tokens), batch_size, progress)
    out = {}
    for lang, span in spans.items():
        nlls, toks, byts = tuple(doc_nll[span]), tuple(doc_tokens[span]), tuple(doc_bytes[span])
        nll, n_tokens, n_bytes = sum(nlls), sum(toks), sum(byts)
        out[lang] = LangPerplexity(
            ppl=math.exp(nll / n_tokens),
            bpb=nll / (math.log(2) * n_bytes),
            nll=nll,
            tokens=n_tokens,
            bytes=n_bytes,
            doc_nll=nlls,
            doc_tokens=toks,
            doc_bytes=byts,
        )
    return out


def paper_perplexity(
    model,
    tokenizer,
    texts: dict[str, list[str]],
    *,
    seq_len: int = 512,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, PaperPerplexity]:
    """The authors' perplexity of every language (module docstring): its documents of at most
    `seq_len` tokens in input order, `batch_size` per batch (the last one may be smaller). A
    language with no such document is an error. The model's train/eval mode is restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} is not a positive integer")
    device = getattr(model, "device", None) or next(model.parameters()).device
    out = {}
    with torch.inference_mode(), modes_kept(model, training=False):
        for lang, docs in texts.items():
            docs = list(docs)
            try:
                samples = pack_documents(tokenizer, docs, seq_len, drop_long=True)
            except ValueError as err:
                raise ValueError(f"paper perplexity of language {lang!r}: {err}") from None
            starts = range(0, len(samples), batch_size)
            rank, world = ranks.world()  # under torch.distributed: every world-th batch
            mine = [starts[b] for b in ranks.deal(len(starts), rank, world)]

            def score(mine=mine, samples=samples, lang=lang, rank=rank) -> list[float]:
                losses = []
                for start in tqdm(
                    mine, desc=f"paper ppl [{lang}]", disable=not progress or rank > 0
                ):
                    inputs = {
                        k: v.to(device)
                        for k, v in lm_inputs(samples[start : start + batch_size]).items()
                    }
                    labels = inputs.pop("labels")[:, 1:]
                    logits = model(**inputs, use_cache=False).logits[:, :-1]
                    nll = _row_nll(logits, labels.to(logits.device)).sum()
                    losses.append(float(nll) / int((labels != -100).sum()))
                return losses

            losses = ranks.in_order(ranks.gathered(score), len(starts))
            out[lang] = PaperPerplexity(
                ppl=math.exp(sum(losses) / len(losses)),
                batch_loss=tuple(losses),
                docs=len(samples),
                dropped=len(docs) - len(samples),
            )
    return out


def _score_windows(model, windows, n_groups: int, batch_size: int, progress: bool) -> list[float]:
    """Summed NLL (nats) of the predicted tokens of each group's windows."""
    device = getattr(model, "device", None) or next(model.parameters()).device
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory error
    # shows up on the first batch rather than after minutes. Among equal lengths, most predicted
    # first: the last windows of long documents (full context, few predictions) batch together
    # and their batches compute logits for few positions.
    order = sorted(range(len(windows)), key=lambda k: (-len(windows[k][1]), -windows[k][2]))
    batches = _token_budget_batches(order, [len(w[1]) - 1 for w in windows], batch_size)
    keeps_logits = _accepts_logits_to_keep(model)
    # Under torch.distributed each rank scores every world-th batch (`ranks`); the rows come
    # back to every rank and are added up in one process's order.
    rank, world = ranks.world()
    mine = [batches[b] for b in ranks.deal(len(batches), rank, world)]

    def score() -> list[torch.Tensor]:
        rows = []
        bar = tqdm(
            total=sum(windows[k][2] for members in mine for k in members),
            desc="perplexity",
            unit="tok",
            disable=not progress or rank > 0,
        )
        try:
            with torch.inference_mode(), modes_kept(model, training=False):
                for members in mine:
                    batch = [windows[k] for k in members]
                    ids, mask, labels = (t.to(device) for t in _pad(batch))
                    keep = _positions_to_keep(batch) if keeps_logits else labels.shape[1]
                    extra = {"logits_to_keep": keep} if keeps_logits else {}
                    # No KV cache: nothing is generated, and filling one copies every layer's K/V.
                    out = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
                    rows.append(_row_nll(out.logits[:, -keep:], labels[:, -keep:]).cpu())
                    bar.update(sum(n_pred for _, _, n_pred in batch))
        finally:
            bar.close()
        return rows

    totals = torch.zeros(n_groups, dtype=torch.float64)
    for members, row_nll in zip(
        batches, ranks.in_order(ranks.gathered(score), len(batches)), strict=True
    ):
        totals.index_add_(0, torch.tensor([windows[k][0] for k in members]), row_nll)
    return totals.tolist()


def _accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do: it is
    how generation skips the head on the prompt); a wrapper without it gets every position."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _positions_to_keep(batch) -> int:
    """How many last positions of the right-padded batch hold every scored position: a window
    of n input positions scores its last n_pred, and the batch is as wide as its longest one."""
    width = max(len(seq) for _, seq, _ in batch) - 1
    return max(width - (len(seq) - 1) + n_pred for _, seq, n_pred in batch)


def _row_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed NLL (float64) of the labelled positions (label -100: not scored).

    The log-softmax runs in fp32 on chunks of TOKENS_PER_ROW positions, so a bf16 model's fp32
    copy of its logits stays one (TOKENS_PER_ROW, vocab) matrix, in a few large calls rather
    than one per row.
    """
    rows, width = labels.shape
    flat_logits, flat_labels = logits.reshape(rows * width, -1), labels.reshape(-1)
    nll = torch.cat(
        [
            F.cross_entropy(chunk.float(), target, reduction="none")  # 0 where label is -100
            for chunk, target in zip(
                flat_logits.split(TOKENS_PER_ROW), flat_labels.split(TOKENS_PER_ROW), strict=True
            )
        ]
    )
    return nll.view(rows, width).double().sum(dim=1)


def _token_budget_batches(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Consecutive runs of `order` (longest first) with at most `batch_size` windows and at most
    `batch_size * TOKENS_PER_ROW` padded tokens (the first window sets a batch's width)."""
    batches: list[list[int]] = []
    budget = batch_size * TOKENS_PER_ROW
    for k in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= budget
        ):
            batches[-1].append(k)
        else:
            batches.append([k])
    return batches


def _pad(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and next-token labels (-100 where not scored)."""
    width = max(len(seq) for _, seq, _ in batch) - 1
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (_, seq, n_pred) in enumerate(batch):
        n = len(seq) - 1
        ids[row, :n] = torch.tensor(seq[:-1])
        mask[row, :n] = 1
        # position p predicts seq[p + 1]; only the last n_pred positions are scored
        labels[row, n - n_pred : n] = torch.tensor(seq[n - n_pred + 1 :])
    return ids, mask, labels
