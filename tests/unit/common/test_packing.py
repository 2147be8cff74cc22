"""The `documents` packing (one document per sample, the authors' rule) against samples written
out by hand, and `lm_inputs`: what the loss of a padded batch reads."""

from __future__ import annotations

import pytest
import torch

from regionbench.common.packing import PAD, lm_inputs, pack_documents
from regionbench.testing import char_tokenizer

BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_one_document_per_row_bos_first_eos_last_right_padded(tok):
    docs = ["ab", "cdefgh", "i"]
    samples = pack_documents(tok, docs, 6)
    assert samples.dtype == torch.int64 and samples.shape == (3, 6)
    assert samples.tolist() == [
        [BOS, *ids(tok, "ab"), EOS, PAD, PAD],
        [BOS, *ids(tok, "cdefg")],  # cut after seq_len tokens: the EOS is lost
        [BOS, *ids(tok, "i"), EOS, PAD, PAD, PAD],
    ]


def test_drop_long_leaves_out_documents_longer_than_seq_len_counting_bos_and_eos(tok):
    docs = ["abcd", "abcde", "ab", "abcdefgh", "a"]  # 6, 7, 4, 10, 3 tokens with BOS and EOS
    samples = pack_documents(tok, docs, 6, drop_long=True)
    assert samples.tolist() == [
        [BOS, *ids(tok, "abcd"), EOS],  # exactly seq_len: kept whole
        [BOS, *ids(tok, "ab"), EOS, PAD, PAD],
        [BOS, *ids(tok, "a"), EOS, PAD, PAD, PAD],
    ]


def test_n_samples_counts_kept_documents_and_reads_no_further(tok):
    read = []

    def stream():
        for i in range(10_000):
            read.append(i)
            yield "abcdefghij" if i % 2 else "ab"

    samples = pack_documents(tok, stream(), 5, n_samples=3, drop_long=True)
    assert samples.tolist() == [[BOS, *ids(tok, "ab"), EOS, PAD]] * 3
    assert len(read) <= 512  # a chunk or two of the stream
    with pytest.raises(
        ValueError, match="gives 1 documents of at most 5 tokens .*fewer than the 2"
    ):
        pack_documents(tok, ["ab", "abcdefgh"], 5, n_samples=2, drop_long=True)
    with pytest.raises(ValueError, match="no sample"):
        pack_documents(tok, ["abcdefgh"], 5, drop_long=True)
    with pytest.raises(ValueError, match="seq_len 1 is too small"):
        pack_documents(tok, ["ab"], 1)


def test_lm_inputs_mask_the_padding_out_of_attention_and_loss():
    batch = torch.tensor([[BOS, 5, 6, EOS, PAD, PAD], [BOS, 7, EOS, PAD, PAD, PAD]])
    inputs = lm_inputs(batch)
    # cut to the longest row; padding: id 0, attention 0, label -100; EOS is a target
    assert inputs["input_ids"].tolist() == [[BOS, 5, 6, EOS], [BOS, 7, EOS, 0]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert inputs["labels"].tolist() == [[BOS, 5, 6, EOS], [BOS, 7, EOS, -100]]
    full = torch.tensor([[BOS, 5, 6, EOS]])
    assert set(lm_inputs(full)) == {"input_ids", "labels"}  # full windows: as they are
    assert lm_inputs(full)["input_ids"] is full
