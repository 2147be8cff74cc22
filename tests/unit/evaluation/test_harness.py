"""lm-eval on the in-memory model: our task folder, agreement with `perplexity`, the empty-context
grammar scoring, the same scores as the `lm_eval` command line (BOS included), no stale answers
after an in-place intervention, nothing left changed, and hub tasks whose data cannot be had
failing before any model work."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from regionbench.common.names import lm_eval_metrics
from regionbench.evaluation import catalog, harness, task_files
from regionbench.evaluation.perplexity import perplexity
from regionbench.evaluation.tasks.rb_tasks import KINDS
from regionbench.testing import tiny_llama, tiny_tokenizer

VOCAB = 96
TEXTS = {
    "en": [
        "the cat sat on the mat",
        "a dog ran to the old house",
        " ".join(["the old cat ran to the mat"] * 6),
    ],  # longer than max_length below
    "ru": ["кошка сидела на коврике", "собака бежала домой"],
}
PAIRS = {
    "en": [
        {"good": "the cat sat", "bad": "the cat sit", "kind": "agreement"},
        {"good": "the dog ran", "bad": "dog the ran", "kind": "word_order"},
        {"good": "the old house", "bad": "the house old", "kind": "adj_position"},
        {"good": "a cat ran", "bad": "a cat run", "kind": "agreement"},
    ],
    "ru": [
        {"good": "кошка сидела", "bad": "сидела кошка", "kind": "word_order"},
        {"good": "собака бежала", "bad": "собака бежали", "kind": "agreement"},
        {"good": "старый дом", "bad": "дом старый", "kind": "adj_position"},
    ],
}
MAX_LENGTH = 16
# A multiple-choice task with a context, as MMLU's: whether the context starts with BOS matters.
MC_DOCS = [
    {"question": "the cat sat on the", "choices": ["mat", "house", "dog"], "answer": 0},
    {"question": "a dog ran to the old", "choices": ["house", "mat", "cat"], "answer": 0},
    {"question": "the old cat ran to", "choices": ["the mat", "a dog", "the house"], "answer": 2},
    {"question": "кошка сидела на", "choices": ["коврике", "домой"], "answer": 0},
]
MC_TASK = """\
task: bos_mc
dataset_path: ""
custom_dataset: !function regionbench.evaluation.tasks.rb_tasks.load_jsonl
dataset_kwargs: {data_file: bos_mc.jsonl}
output_type: multiple_choice
test_split: test
doc_to_text: question
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def tok():
    corpus = [d for docs in TEXTS.values() for d in docs]
    corpus += [p[k] for pairs in PAIRS.values() for p in pairs for k in ("good", "bad")]
    return tiny_tokenizer(corpus)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return task_files.write_tasks(
        tmp_path_factory.mktemp("tasks"), ppl_texts=TEXTS, grammar_pairs=PAIRS
    )


@pytest.fixture(scope="module")
def mc_root(tmp_path_factory):
    """Our rb_ppl tasks and `bos_mc`, a multiple-choice task in the same folder."""
    folder = task_files.write_tasks(tmp_path_factory.mktemp("mc_tasks"), ppl_texts=TEXTS)
    rows = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in MC_DOCS)
    (folder / "data" / "bos_mc.jsonl").write_text(rows, encoding="utf-8")
    data = f"{{data_file: {folder / 'data' / 'bos_mc.jsonl'}}}"
    (folder / "bos_mc.yaml").write_text(MC_TASK.replace("{data_file: bos_mc.jsonl}", data))
    return folder


def lls(results, task):
    """Every choice's log-likelihood, document by document."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [resp[0][0] for s in samples for resp in s["resps"]]


def run(model, tok, tasks, root, **kw):
    return harness.run_lm_eval(
        model, tok, tasks, include_path=root, batch_size=4, max_length=MAX_LENGTH, **kw
    )


def test_task_folder_layout(root):
    templates = Path(task_files.__file__).resolve().parent / "tasks"
    assert (root / "rb_ppl_en.yaml").read_text().splitlines() == [
        f'include: "{templates / "_rb_ppl_template_yaml"}"',
        "task: rb_ppl_en",
        f'dataset_kwargs: {{data_file: "{root.resolve() / "data" / "rb_ppl_en.jsonl"}"}}',
    ]
    rows = (root / "data" / "sandbox_grammar_ru.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(r) for r in rows] == PAIRS["ru"]
    template = (templates / "_sandbox_grammar_template_yaml").read_text()
    assert all(f"metric: acc_{kind}\n" in template for kind in KINDS)
    # no code in the folder: YAML and data only, the templates and rb_tasks.py stay in the package
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert {Path(f).suffix for f in files} == {".yaml", ".jsonl"}, files

    from lm_eval.tasks import TaskManager

    names = set(TaskManager(include_path=str(root), include_defaults=False).all_tasks)
    assert names == {
        "rb_ppl",
        "rb_ppl_en",
        "rb_ppl_ru",
        "sandbox_grammar",
        "sandbox_grammar_en",
        "sandbox_grammar_ru",
    }


def test_rewriting_replaces_the_family(tmp_path):
    task_files.write_tasks(tmp_path, ppl_texts={"aa": ["x"], "bb": ["y"]})
    task_files.write_tasks(tmp_path, ppl_texts={"cc": ["z", ""]})
    assert sorted(p.name for p in tmp_path.glob("rb_ppl*.yaml")) == [
        "rb_ppl.yaml",
        "rb_ppl_cc.yaml",
    ]
    assert (tmp_path / "data" / "rb_ppl_cc.jsonl").read_text() == '{"text": "z"}\n'


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ppl_texts": {"e n": ["x"]}}, "language code 'e n'"),
        ({"ppl_texts": {"en": ["", ""]}}, r"ppl_texts\['en'\] is empty"),
        ({"grammar_pairs": {"en": [{"good": "a", "bad": "b", "kind": "tense"}]}}, "'kind' in"),
        ({"grammar_pairs": {"en": [{"good": "a", "kind": "agreement"}]}}, "needs 'good', 'bad'"),
        ({}, "needs ppl_texts or grammar_pairs"),
    ],
)
def test_write_tasks_rejects_bad_input(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        task_files.write_tasks(tmp_path, **kw)


def test_rb_ppl_agrees_with_perplexity(model, tok, root):
    flat = lm_eval_metrics(run(model, tok, ["rb_ppl"], root))
    ours = perplexity(model, tok, TEXTS, max_length=MAX_LENGTH, progress=False)
    for lang, r in ours.items():
        assert flat[f"lm_eval/rb_ppl_{lang}/bits_per_byte"] == pytest.approx(r.bpb, rel=1e-6)
        assert flat[f"lm_eval/rb_ppl_{lang}/byte_perplexity"] == pytest.approx(2**r.bpb, rel=1e-6)
    mean_bpb = sum(r.bpb for r in ours.values()) / len(ours)
    assert flat["lm_eval/rb_ppl/bits_per_byte"] == pytest.approx(mean_bpb, rel=1e-6)


def test_tasks_are_scored_like_the_lm_eval_command_line(model, tok, mc_root, tmp_path):
    """MMLU-like context: BOS as `lm_eval --model hf` gives it (the tokenizer adds it here)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    loaded_tok = AutoTokenizer.from_pretrained(folder)
    assert loaded_tok("the cat").input_ids[0] == loaded_tok.bos_token_id  # like LLaMA-2's

    ours = harness.run_lm_eval(
        loaded, loaded_tok, ["bos_mc"], include_path=mc_root, log_samples=True
    )
    cli = simple_evaluate(  # what the `lm_eval` command line runs (minus the built-in index)
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=["bos_mc"],
        task_manager=TaskManager(include_path=str(mc_root), include_defaults=False),
        device="cpu",
        log_samples=True,
    )
    assert ours["results"]["bos_mc"]["acc,none"] == cli["results"]["bos_mc"]["acc,none"]
    assert lls(ours, "bos_mc") == pytest.approx(lls(cli, "bos_mc"), abs=1e-6)
    assert len(lls(ours, "bos_mc")) == sum(len(doc["choices"]) for doc in MC_DOCS)


def test_rb_ppl_keeps_one_bos_next_to_other_tasks(model, tok, mc_root):
    """rb_ppl gets add_bos_token=False in the same call as a task that gets lm-eval's default;
    the two simple_evaluate results merge into one shaped like a single call's."""
    tasks = ["bos_mc", "rb_ppl"]
    mixed = run(model, tok, tasks, mc_root, log_samples=True)
    single = run(model, tok, tasks, mc_root, log_samples=True, add_bos_token=False)

    flat = lm_eval_metrics(mixed)
    ours = perplexity(model, tok, TEXTS, max_length=MAX_LENGTH, progress=False)
    for lang, r in ours.items():
        assert flat[f"lm_eval/rb_ppl_{lang}/bits_per_byte"] == pytest.approx(r.bpb, rel=1e-6)
    # an explicit False reaches every task: the context loses its BOS
    assert lls(single, "bos_mc") != pytest.approx(lls(mixed, "bos_mc"), abs=1e-6)

    assert list(mixed) == list(single)
    sections = "results groups group_subtasks configs versions n-shot higher_is_better n-samples"
    for section in [*sections.split(), "samples"]:
        assert set(mixed[section]) == set(single[section]), section
    for name in ("rb_ppl", "rb_ppl_en", "rb_ppl_ru"):
        assert mixed["configs"].get(name) == single["configs"].get(name)
        assert mixed["n-samples"].get(name) == single["n-samples"].get(name)
    assert mixed["groups"]["rb_ppl"] == single["groups"]["rb_ppl"]
    assert mixed["samples"]["rb_ppl_en"] == single["samples"]["rb_ppl_en"]


def test_grammar_scores_whole_sentences_after_the_prefix(model, tok, root):
    results = run(model, tok, ["sandbox_grammar"], root, log_samples=True)
    flat = lm_eval_metrics(results)
    scores = []
    for lang, pairs in PAIRS.items():
        samples = sorted(results["samples"][f"sandbox_grammar_{lang}"], key=lambda s: s["doc_id"])
        for pair, sample in zip(pairs, samples, strict=True):
            assert [tuple(a) for a in sample["arguments"]] == [
                ("", pair["good"]),
                ("", pair["bad"]),
            ]
            good, bad = (resp[0][0] for resp in sample["resps"])
            # empty context: lm-eval conditions on the prefix token (BOS) alone
            expected = perplexity(model, tok, {"x": [pair["good"]]}, progress=False)["x"].nll
            assert -good == pytest.approx(expected, rel=1e-5)
            scores.append((lang, pair["kind"], 1.0 if good > bad else 0.5 if good == bad else 0))
    for lang in PAIRS:
        mine = [s for lg, _, s in scores if lg == lang]
        assert flat[f"lm_eval/sandbox_grammar_{lang}/acc"] == pytest.approx(sum(mine) / len(mine))
        for kind in KINDS:
            mine = [s for lg, k, s in scores if lg == lang and k == kind]
            key = f"lm_eval/sandbox_grammar_{lang}/acc_{kind}"
            assert flat[key] == pytest.approx(sum(mine) / len(mine))
    assert flat["lm_eval/sandbox_grammar/acc"] == pytest.approx(
        sum(s for *_, s in scores) / len(scores)
    )
    assert {f"lm_eval/sandbox_grammar/acc_{kind}" for kind in KINDS} <= set(flat)


def test_in_place_change_is_evaluated_and_nothing_is_left_changed(model, tok, root):
    tasks = ["rb_ppl", "sandbox_grammar"]
    model.train()
    model.model.layers[1].eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def lls(results):
        return [resp[0][0] for s in results["samples"]["sandbox_grammar_en"] for resp in s["resps"]]

    def checked_run():
        seed = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        results = run(model, tok, tasks, root, log_samples=True)
        assert (random.getstate(), torch.get_rng_state().tolist()) == (seed[0], seed[2].tolist())
        assert np.random.get_state()[1].tolist() == seed[1][1].tolist()
        assert model.training and not model.model.layers[1].training
        assert model.model.layers[0].training
        return results

    base = checked_run()
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())

    proj = model.model.layers[0].mlp.down_proj.weight
    saved = proj.detach().clone()
    with torch.no_grad():
        proj.zero_()
    try:
        changed = checked_run()
        assert torch.equal(proj, torch.zeros_like(proj))
    finally:
        with torch.no_grad():
            proj.copy_(saved)
    again = checked_run()

    flat = {
        name: lm_eval_metrics(r)
        for name, r in (("base", base), ("changed", changed), ("again", again))
    }
    key = "lm_eval/rb_ppl_en/bits_per_byte"
    assert flat["changed"][key] != flat["base"][key]
    assert lls(changed) != lls(base)
    assert flat["again"] == flat["base"] and lls(again) == lls(base)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert tok.padding_side == "right" and tok.pad_token == "<pad>"


class Untouchable:
    """A 'model' that fails the test if anything looks at it."""

    def __getattr__(self, name):
        raise AssertionError(f"model.{name} used before the task names were checked")


def test_unknown_task_fails_before_model_work(tok, root, monkeypatch):
    # Pretend lm-eval has no built-in tasks: indexing its ~15k files takes ~10 s (slow test below).
    original = catalog._task_manager
    monkeypatch.setattr(
        catalog, "_task_manager", lambda path, defaults: original(path, defaults=False)
    )
    with pytest.raises(ValueError) as err:
        harness.run_lm_eval(Untouchable(), tok, ["sandbox_gramar", "rb_ppl"], include_path=root)
    message = str(err.value)
    assert "'sandbox_gramar' (did you mean 'sandbox_grammar' or" in message
    assert "\n" not in message and "rb_ppl" not in message.split(":")[0]
    with pytest.raises(ValueError, match="is not a directory"):
        catalog.check_tasks(["rb_ppl"], root / "missing")


def test_our_folder_alone_does_not_index_builtin_tasks(root, monkeypatch):
    pytest.importorskip("lm_eval.tasks._index", reason="lm-eval < 0.4.12 always indexes all")
    original = catalog._task_manager

    def local_only(path, defaults):
        assert not defaults, "built-in task index requested"
        return original(path, defaults=False)

    monkeypatch.setattr(catalog, "_task_manager", local_only)
    catalog.check_tasks(["sandbox_grammar", "rb_ppl_ru"], root)

    import lm_eval.tasks

    def never(*args, **kwargs):
        raise AssertionError("our own task built by prepare_tasks")

    monkeypatch.setattr(lm_eval.tasks, "get_task_dict", never)
    catalog.prepare_tasks(["sandbox_grammar", "rb_ppl_ru"], root)


@pytest.fixture
def nothing_cached(tmp_path, monkeypatch):
    """An empty datasets cache: offline, no hub dataset can be loaded (whatever this machine has
    cached)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def test_hub_task_without_its_data_fails_before_model_work(
    root, monkeypatch, tmp_path, nothing_cached
):
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    # A task outside our folder whose data can be had: a `datasets` builder over a local file.
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in MC_DOCS))
    (hub / "json_mc.yaml").write_text(
        MC_TASK.replace("bos_mc", "json_mc")
        .replace(
            'dataset_path: ""\ncustom_dataset: !function regionbench.evaluation.tasks.rb_tasks.'
            "load_jsonl\n",
            "",
        )
        .replace("{data_file: json_mc.jsonl}", f"{{data_files: {{test: {hub / 'docs.jsonl'}}}}}")
        .replace("task: json_mc\n", "task: json_mc\ndataset_path: json\n")
    )
    # lm-eval's own arc folder stands in for its full built-in index (~10 s; slow test below)
    arc = Path(lm_eval.tasks.__file__).parent / "arc"
    original = catalog._task_manager

    def arc_only(path, defaults):
        if not defaults:
            return original(path, defaults=False)
        return TaskManager(include_path=[str(path), str(arc), str(hub)], include_defaults=False)

    monkeypatch.setattr(catalog, "_task_manager", arc_only)
    catalog.prepare_tasks(["json_mc", "sandbox_grammar"], root)
    assert any((tmp_path / "datasets").rglob("*.arrow")), "json_mc's dataset was not prepared"

    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        catalog.prepare_tasks(["sandbox_grammar", "arc_easy"], root)
    assert time.perf_counter() - start < 30  # milliseconds in fact; a download would hang
    message = str(err.value)
    assert message.startswith(
        "cannot load the dataset of lm-eval task 'arc_easy' (offline? HF_DATASETS_OFFLINE is set): "
    )
    assert "allenai/ai2_arc" in message and "\n" not in message
    # a tag or group names the member whose data is missing
    with pytest.raises(ValueError, match=r"task 'arc_(easy|challenge)' \(in 'ai2_arc'\)"):
        catalog.prepare_tasks(["ai2_arc"], root)


@pytest.mark.slow
def test_paper_tasks_fail_offline_before_model_work(root, nothing_cached):
    """eval=paper offline, through lm-eval's full index: MMLU's first subject names the gap."""
    with pytest.raises(ValueError, match=r"dataset of lm-eval task 'mmlu_\w+' \(in 'mmlu'\)"):
        catalog.prepare_tasks(["mmlu", "sandbox_grammar"], root)


@pytest.mark.slow
def test_unknown_builtin_task_gets_close_matches(root):
    catalog.check_tasks(["hellaswag", "rb_ppl"], root)  # built-in and ours together
    with pytest.raises(ValueError, match=r"'hellaswg' \(did you mean 'hellaswag'"):
        catalog.check_tasks(["hellaswg"])


def test_flatten_results_names():
    results = {
        "results": {
            "xnli_en": {
                "alias": "xnli_en",
                "sample_len": 10,
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "f1,none": "N/A",
                "bad,none": None,
            },
            "gsm8k": {
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.01,
                "flag,none": True,
            },
        },
        "groups": {"grp": {"acc,none": 0.75, "acc_k,none": float("nan")}},
    }
    assert lm_eval_metrics(results) == {
        "lm_eval/xnli_en/acc": 0.5,
        "lm_eval/xnli_en/acc_stderr": 0.1,
        "lm_eval/gsm8k/exact_match/strict-match": 0.25,
        "lm_eval/gsm8k/exact_match_stderr/strict-match": 0.01,
        "lm_eval/grp/acc": 0.75,
    }


def test_unsupported_lm_eval_version_is_a_clear_error(monkeypatch, tok):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.4.8")
    with pytest.raises(RuntimeError, match=r"lm-eval 0.4.8 is not supported.*>=0.4.10,<0.5"):
        harness.run_lm_eval(Untouchable(), tok, ["rb_ppl"])


@pytest.mark.slow
def test_folder_runs_with_the_lm_eval_command_line(model, tok, root, tmp_path):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    subprocess.run(
        [
            str(Path(sys.executable).parent / "lm_eval"),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={folder},add_bos_token=False,max_length={MAX_LENGTH}",
            "--include_path",
            str(root),  # YAML and data only; the templates and their code are the package's
            "--tasks",
            "sandbox_grammar,rb_ppl",
            "--batch_size",
            "4",
            "--device",
            "cpu",
            "--output_path",
            str(tmp_path / "out"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    [out] = (tmp_path / "out").rglob("results*.json")
    cli = lm_eval_metrics(json.loads(out.read_text()))
    ours = lm_eval_metrics(run(model, tok, ["sandbox_grammar", "rb_ppl"], root))
    assert cli.keys() == ours.keys()
    assert all(cli[k] == pytest.approx(ours[k], rel=1e-5) for k in ours)


@pytest.mark.slow
def test_language_templates_expand_to_existing_tasks():
    """eval=multilingual's templates: one task per language lm-eval has (indexes lm-eval)."""
    from regionbench.evaluation.catalog import expand_tasks

    langs = [
        {"lang": "ar", "flores": "arb_Arab"},
        {"lang": "vi", "flores": "vie_Latn"},
        {"lang": "xx", "flores": "xxx_Xxxx"},
    ]
    tasks, skipped = expand_tasks(
        ["mmlu", "xnli_{lang}", "belebele_{flores}", "xstorycloze_{lang}"], langs
    )
    assert tasks == [
        "mmlu",
        "xnli_ar",
        "xnli_vi",
        "belebele_arb_Arab",
        "belebele_vie_Latn",
        "xstorycloze_ar",
    ]
    assert set(skipped) == {"xnli_xx", "belebele_xxx_Xxxx", "xstorycloze_vi", "xstorycloze_xx"}


def test_no_git_message_outside_a_checkout(model, tok, root, tmp_path, monkeypatch, capfd):
    """lm-eval looks up the launch directory's commit with git; outside a checkout git's
    `fatal: not a git repository` reached the console once per job. It is gone, and the
    results record no commit, as lm-eval's own lookup would."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above
    results = run(model, tok, ["sandbox_grammar"], root)
    assert "not a git repository" not in capfd.readouterr().err
    assert results["git_hash"] is None
    assert "sandbox_grammar" in results["results"]


def test_the_environment_is_looked_up_once_per_process(model, tok, root, monkeypatch):
    """lm-eval adds its environment record to every result; it costs child processes (`pip
    list`, ...) on every call, so two evaluations look it up once and both results carry it."""
    from lm_eval.loggers import utils

    calls = []
    real = utils.add_env_info

    def counted(storage):
        calls.append(1)
        real(storage)

    monkeypatch.setattr(utils, "add_env_info", counted)
    monkeypatch.setattr(harness, "_ENV_INFO", {})
    first = harness.run_lm_eval(model, tok, ["rb_ppl"], include_path=root)
    second = harness.run_lm_eval(model, tok, ["rb_ppl"], include_path=root)
    assert len(calls) == 1
    assert first["pretty_env_info"] == second["pretty_env_info"] and first["pretty_env_info"]
    assert first["lm_eval_version"] == second["lm_eval_version"]
