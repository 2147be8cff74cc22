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


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory, sandbox_test_dir):
    """These jobs fill a cache of their own: other tests expect the session cache without their
    importance scores and baselines (a first job there must be an importance miss)."""
    import os

    cache = tmp_path_factory.mktemp("paper-cache")
    (cache / "sandbox").symlink_to(sandbox_test_dir.parent)
    saved = os.environ["REGIONBENCH_CACHE"]
    os.environ["REGIONBENCH_CACHE"] = str(cache)
    yield cache
    os.environ["REGIONBENCH_CACHE"] = saved


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


# What the paper freeze preset needs on the sandbox at debug size: a language sandbox-test's
# tokenizer knows (its held-out ones give no document of <= 128 tokens), the sandbox's own
# evaluation languages, and documents as long as its context.
SANDBOX_FREEZE = ["intervention.target_langs=[latn]", "data.eval_langs=null"]
SANDBOX_FREEZE.append("intervention.seq_len=128")


def cosine(step, *, peak, warmup, total):
    """The lr of 0-based optimizer step `step`: linear warm-up (step + 1) / warmup, then half a
    cosine from the peak to 0 over the remaining steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_paper_freeze_preset_runs_at_debug_size_with_its_cosine_schedule(store, sandbox_test_dir):
    cfg = compose(
        [
            "+experiment=paper_llama2_7b_freeze",
            "frozen_set=core-5",
            *SMALL,
            "data=sandbox",
            "eval=default",
            *SANDBOX_FREEZE,
            f"tracking.uri={store}",
            "tracking.experiment=paper-freeze",
        ]
    )
    iv = cfg.intervention
    assert (iv.lr, list(iv.betas), iv.schedule, iv.grad_accum, iv.packing) == (
        5e-5,
        [0.9, 0.95],
        "cosine",
        32,
        "documents",
    )
    result = run_job(cfg, name="paper-freeze", session=Session())
    assert result["status"] == "FINISHED", result
    client = MlflowClient(tracking_uri=store)
    run_id = result["run_id"]
    lrs = client.get_metric_history(run_id, "train/lr")
    assert [h.step for h in lrs] == [1, 2, 3, 4]  # one value per optimizer step
    expected = [cosine(s, peak=5e-5, warmup=iv.warmup_steps, total=iv.steps) for s in range(4)]
    assert [h.value for h in lrs] == pytest.approx(expected, rel=1e-9)
    assert expected[-1] < expected[1]  # it decays
    m = client.get_run(run_id).data.metrics
    # the region (scope paper) covers 1 entry of each of sandbox-test's 4 norm gains at 5%;
    # freeze_exclude [norm] trains them
    assert m["train/frozen_params"] == m["region/params"] - 4
    assert 0 < m["train/samples"] < 40  # debug's 40 documents, the long ones dropped
    paper = client.get_metric_history(run_id, "ppl_paper/latn")
    assert sorted(h.step for h in paper) == [0, 2, 4]  # each evaluation step once
    assert m["ppl_paper/latn"] == next(h.value for h in paper if h.step == 4)
    assert next(h.value for h in paper if h.step == 0) != m["ppl_paper/latn"]
    assert {"ppl_paper_ratio/mean", "ppl_ratio/mean", "learn/latn"} <= set(m)
