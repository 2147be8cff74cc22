"""The authors' protocol as jobs on sandbox-test, read back from MLflow: the paper perplexity
against an independent loop of its definition, and the paper freeze preset's schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL, compose
from mlflow.tracking import MlflowClient

from regionbench.pipeline import run_job
from regionbench.session import Session


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def authors_ppl(model, tok, docs, seq_len, batch_size):
    """The authors' `evaluation()`: each document [BOS] ids [EOS] if it has at most seq_len
    tokens, batches of batch_size in order, exp of the mean of the batches' token-mean NLL."""
    kept = []
    for doc in docs:
        seq = [tok.bos_token_id, *tok(doc, add_special_tokens=False).input_ids, tok.eos_token_id]
        if len(seq) <= seq_len:
            kept.append(torch.tensor(seq))
    losses = []
    for start in range(0, len(kept), batch_size):
        nll, count = 0.0, 0
        for seq in kept[start : start + batch_size]:
            with torch.no_grad():
                logits = model(seq[None, :-1]).logits[0].float()
            nll += F.cross_entropy(logits, seq[1:], reduction="sum").item()
            count += len(seq) - 1
        losses.append(nll / count)
    return math.exp(sum(losses) / len(losses))


def test_ppl_paper_is_the_authors_definition_beside_the_rolling_perplexity(store, sandbox_test_dir):
    from regionbench.data.sources import load_texts
    from regionbench.models.loading import load_model

    common = [
        *SMALL,
        "eval.ppl_protocol=paper",
        "eval.paper_batch_size=3",
        "eval.lm_eval.tasks=[]",
        f"tracking.uri={store}",
        "tracking.experiment=paper-ppl",
    ]
    session = Session()
    base = run_job(compose([*common, "ratio=0"]), name="base", session=session)
    removed = run_job(compose([*common, "ratio=0.05"]), name="removed", session=session)
    assert base["status"] == removed["status"] == "FINISHED", (base, removed)

    model, tok = load_model(str(sandbox_test_dir))
    texts = load_texts("sandbox", "eval", None, compose(SMALL).data.eval_docs)
    seq_len = min(512, model.config.max_position_embeddings)  # eval.paper_seq_len null
    client = MlflowClient(tracking_uri=store)
    m = client.get_run(base["run_id"]).data.metrics
    r = client.get_run(removed["run_id"]).data.metrics
    for lang, docs in texts.items():
        assert m[f"ppl_paper/{lang}"] == pytest.approx(authors_ppl(model, tok, docs, seq_len, 3))
        assert m[f"ppl_paper_ratio/{lang}"] == pytest.approx(1.0)
        assert r[f"ppl_paper_ratio/{lang}"] == pytest.approx(
            r[f"ppl_paper/{lang}"] / m[f"ppl_paper/{lang}"]
        )
        assert f"ppl/{lang}" in m and m[f"ppl/{lang}"] != m[f"ppl_paper/{lang}"]  # both logged
    mean = sum(r[f"ppl_paper_ratio/{lang}"] for lang in texts) / len(texts)
    assert r["ppl_paper_ratio/mean"] == pytest.approx(mean) and mean > 1


def test_ppl_paper_without_a_short_document_fails_before_the_importance_pass(store):
    cfg = compose(
        [
            *SMALL,
            "eval.ppl_protocol=paper",
            "eval.paper_seq_len=8",
            f"tracking.uri={store}",
            "tracking.experiment=paper-ppl",
        ]
    )
    result = run_job(cfg, name="short", session=Session())
    assert result["status"] == "FAILED"
    assert "no evaluation document of 'latn' has at most 8 tokens" in result["error"]
    tags = MlflowClient(tracking_uri=store).get_run(result["run_id"]).data.tags
    assert "importance_key" not in tags  # stopped before it
