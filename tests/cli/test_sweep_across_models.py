"""A sweep across two architectures through the real command: `-m model=hf model.name=A,B` over
two tiny local Hugging Face folders (a LLaMA and a GPT-NeoX, random init, one tokenizer) runs
every job, compares regions only within a model, pairs each job with its own model's baseline,
and ends with a FINISHED parent and exit 0 (slow: a minute of jobs)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import SMALL, run_cli
from mlflow.tracking import MlflowClient

RATIOS = ("0.0", "0.02", "0.05")


def tiny_models(root: Path, tokenizer_from: Path) -> dict[str, Path]:
    """Two random-init causal LMs of different architectures sharing the sandbox-test model's
    tokenizer (the sandbox is multi-script: a tokenizer of its own covers it), saved as
    safetensors folders."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(tokenizer_from)
    size = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 128,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    built = {
        "tiny-llama": tf.LlamaForCausalLM(tf.LlamaConfig(**size, num_key_value_heads=2)),
        "tiny-neox": tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**size)),
    }
    out = {}
    for name, model in built.items():
        torch.manual_seed(0)
        model.save_pretrained(root / name, safe_serialization=True)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.slow
def test_a_sweep_across_architectures_finishes_and_compares_within_each_model(
    tmp_path, cache_dir, sandbox_test_dir
):
    models = tiny_models(tmp_path / "models", sandbox_test_dir)
    cwd = tmp_path / "launch"
    cwd.mkdir()
    args = [
        "-m",
        *SMALL,
        "model=hf",
        f"model.name={','.join(str(p) for p in models.values())}",
        f"ratio={','.join(RATIOS)}",
        "eval=ppl",
        "data.eval_docs=4",
        "importance.samples=4",
        "tracking.baseline={ratio:0}",
    ]
    proc = run_cli(args, cwd, cache_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED", parent.data.tags.get("error")
    assert len(jobs) == len(models) * len(RATIOS)
    assert {j.info.status for j in jobs} == {"FINISHED"}
    by = {(Path(j.data.params["model.name"]).name, j.data.params["ratio"]): j for j in jobs}
    assert set(by) == {(m, r) for m in models for r in RATIOS}
    assert len({j.data.tags["model_fingerprint"] for j in jobs}) == 2
    assert all(j.data.metrics["interval/joint"] == 1.0 for j in jobs)  # sandbox: parallel

    # the overlap: numbers within a model, "—" across the two
    path = client.download_artifacts(parent.info.run_id, "region_overlap.csv", str(tmp_path))
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6  # 2 models x 2 ratios above 0 (ratio 0 saves no mask): 4 regions

    def model_of(condition: str) -> str:  # "tiny-llama taylor core 2%"
        assert condition.split()[0] in models, condition
        return condition.split()[0]

    same = [r for r in rows if model_of(r["a"]) == model_of(r["b"])]
    across = [r for r in rows if model_of(r["a"]) != model_of(r["b"])]
    assert len(same) == 2 and len(across) == 4
    for row in same:  # the 2% core of a matrix lies inside its 5% core
        assert float(row["overlap_coefficient"]) == 1.0
        assert 0.2 < float(row["jaccard"]) < 0.6
        assert row["not_compared"] == ""
    for row in across:
        assert (row["jaccard"], row["overlap_coefficient"]) == ("—", "—")
        assert row["not_compared"] == "different models"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"region_overlap.md", "region_overlap.png", "sweep_paired.csv"} <= arts

    # each job over its own model's unmodified run (ppl/mean / base), never the other model's
    path = client.download_artifacts(parent.info.run_id, "sweep_paired.csv", str(tmp_path))
    with open(path, encoding="utf-8") as f:
        paired = list(csv.DictReader(f))
    assert len(paired) == len(jobs)
    for row in paired:
        model, ratio = Path(row["model.name"]).name, row["ratio"]
        own = by[model, ratio].data.metrics["ppl/mean"] / by[model, "0.0"].data.metrics["ppl/mean"]
        assert float(row["ppl/mean / base"]) == pytest.approx(own, rel=1e-3), row
