"""Evaluation across processes (torch.distributed, gloo on CPU, 2 and 3 ranks) equals one
process: perplexity and the authors' perplexity bit for bit (totals and per-document values, in
input order), lm-eval (rolling, multiple-choice and generated requests; metrics, their stderr and
the logged samples) to float rounding. Also the pipeline's side: helper ranks evaluate rank 0's
changed weights and get their own back bit-exactly; a hooked model is evaluated by rank 0 alone;
a rank that fails fails the call on every rank."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import asdict

import pytest
import torch

from regionbench.evaluation import harness, ranks, task_files
from regionbench.evaluation.perplexity import paper_perplexity, perplexity
from regionbench.importance import distributed
from regionbench.testing import tiny_llama, tiny_tokenizer

VOCAB = 96
MAX_LENGTH = 16  # the long documents get several windows
# 11 documents (not a multiple of 2 or 3); "el" has one: fewer batches of its own than ranks
TEXTS = {
    "en": [
        "the cat sat on the mat",
        "a dog ran to the old house",
        " ".join(["the old cat ran to the mat"] * 4),
        "the cat ran",
        "a dog sat",
        " ".join(["a dog ran to the old house"] * 3),
    ],
    "ru": ["кошка сидела на коврике", "собака бежала домой", "кошка", "собака сидела"],
    "el": ["η γάτα κάθεται στο σπίτι"],
}
PAIRS = {
    "en": [
        {"good": "the cat sat", "bad": "the cat sit", "kind": "agreement"},
        {"good": "the dog ran", "bad": "dog the ran", "kind": "word_order"},
        {"good": "the old house", "bad": "the house old", "kind": "adj_position"},
        {"good": "a cat ran", "bad": "a cat run", "kind": "agreement"},
        {"good": "a dog sat", "bad": "dog a sat", "kind": "word_order"},
    ],
    "ru": [
        {"good": "кошка сидела", "bad": "сидела кошка", "kind": "word_order"},
        {"good": "собака бежала", "bad": "собака бежали", "kind": "agreement"},
    ],
}
MC_DOCS = [  # 5 questions: multiple choice with a context (MMLU's request shape)
    {"question": "the cat sat on the", "choices": ["mat", "house", "dog"], "answer": 0},
    {"question": "a dog ran to the old", "choices": ["house", "mat", "cat"], "answer": 0},
    {"question": "the old cat ran to", "choices": ["the mat", "a dog", "the house"], "answer": 2},
    {"question": "кошка сидела на", "choices": ["коврике", "домой"], "answer": 0},
    {"question": "a dog", "choices": ["ran", "sat", "the"], "answer": 1},
]
TASK = """\
task: {name}
dataset_path: ""
custom_dataset: !function regionbench.evaluation.tasks.rb_tasks.load_jsonl
dataset_kwargs: {{data_file: {data}}}
output_type: {output_type}
test_split: test
doc_to_text: question
doc_to_target: {target}
{extra}metadata:
  version: 1.0
"""
MC = {"output_type": "multiple_choice", "target": "answer", "extra": "doc_to_choice: choices\n"}
GEN = {  # greedy continuations: generate_until requests
    "output_type": "generate_until",
    "target": "'{{choices[answer]}}'",
    "extra": "generation_kwargs: {until: ['.'], max_gen_toks: 3, do_sample: false}\n"
    "metric_list:\n  - metric: exact_match\n",
}
TASKS = ["rb_ppl", "sandbox_grammar", "dist_mc", "dist_gen"]
# lm-eval sorts and batches each rank's share on its own: a request meets other padding, so its
# log-likelihood may differ in the last bits of fp32 (measured: equal at 2 ranks, at most 1.1e-7
# relative at 3, over the 169 numbers of the results and samples compared)
LM_EVAL_REL = 1e-6


def _task_folder(root):
    folder = task_files.write_tasks(root, ppl_texts=TEXTS, grammar_pairs=PAIRS)
    data = folder / "data" / "dist.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in MC_DOCS), "utf-8")
    for name, kind in (("dist_mc", MC), ("dist_gen", GEN)):
        (folder / f"{name}.yaml").write_text(TASK.format(name=name, data=data, **kind))
    return folder


def _evaluate(model, tok, folder) -> dict:
    """The same calls in one process and on every rank, as JSON-ready numbers."""
    ppl = perplexity(model, tok, TEXTS, max_length=MAX_LENGTH, batch_size=2, progress=False)
    paper = paper_perplexity(model, tok, TEXTS, seq_len=40 + 8, batch_size=1, progress=False)
    lm = harness.run_lm_eval(
        model,
        tok,
        TASKS,
        include_path=folder,
        batch_size=2,
        max_length=MAX_LENGTH,
        log_samples=True,
    )
    out = {
        "ppl": {lang: asdict(r) for lang, r in ppl.items()},
        "paper": {lang: asdict(r) for lang, r in paper.items()},
        "lm_eval": None,
    }
    if lm is not None:
        out["lm_eval"] = {k: lm[k] for k in ("results", "samples")}
    return json.loads(json.dumps(out, default=str))


def _join(rank: int, world: int, store: str) -> None:
    import torch.distributed as dist

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)


def _rank(rank: int, world: int, store: str, tmp: str) -> None:
    from transformers import AutoTokenizer

    _join(rank, world, store)
    assert ranks.world() == (rank, world)
    tok = AutoTokenizer.from_pretrained(f"{tmp}/tok")
    out = _evaluate(tiny_llama(vocab_size=VOCAB), tok, f"{tmp}/tasks")
    assert (out["lm_eval"] is None) == (rank > 0)  # lm-eval's results are rank 0's
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    torch.distributed.destroy_process_group()


def _spawn(target, world: int, tmp_path, *args) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=target, args=(r, world, str(tmp_path / "store"), str(tmp_path), *args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * world


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = [d for docs in TEXTS.values() for d in docs]
    corpus += [p[k] for pairs in PAIRS.values() for p in pairs for k in ("good", "bad")]
    corpus += [d["question"] + " " + c for d in MC_DOCS for c in d["choices"]]
    tok = tiny_tokenizer(corpus, vocab_size=VOCAB)
    assert len(tok) <= VOCAB
    return tok


@pytest.fixture
def one_thread():
    """The reference on one thread, as each rank (a GEMM's sums may depend on the threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prepared(tmp_path, tok):
    """The task folder, and the tokenizer as every rank loads it (from its saved folder)."""
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "tok")
    return _task_folder(tmp_path / "tasks"), AutoTokenizer.from_pretrained(tmp_path / "tok")


def _close(a, b, path="") -> None:
    """Equal JSON, numbers to LM_EVAL_REL (an `acc` of 0.6 vs 0.6 stays exact)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{k}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert b == pytest.approx(a, rel=LM_EVAL_REL, abs=1e-9, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_on_several_processes_equals_one_process(tmp_path, tok, one_thread, world):
    folder, tok = _prepared(tmp_path, tok)
    single = _evaluate(tiny_llama(vocab_size=VOCAB), tok, folder)
    _spawn(_rank, world, tmp_path)
    shared = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]

    # perplexity: every rank has one process's result, bit for bit, per document in input order
    for out in shared:
        assert out["ppl"] == single["ppl"]
        assert out["paper"] == single["paper"]
    for lang, docs in TEXTS.items():
        r = single["ppl"][lang]
        assert len(r["doc_nll"]) == len(docs) and all(x > 0 for x in r["doc_nll"])
        assert r["doc_tokens"] == [len(tok(d, add_special_tokens=False).input_ids) for d in docs]
        assert sum(r["doc_nll"]) == pytest.approx(r["nll"], rel=1e-12)
    # several windows in a document, several batches in the authors' protocol: work was shared
    assert max(r["doc_tokens"][2] for r in [single["ppl"]["en"]]) > MAX_LENGTH
    assert len(single["paper"]["en"]["batch_loss"]) > world

    # lm-eval on rank 0: metrics (stderr included) and every request's answer
    lm, one = shared[0]["lm_eval"], single["lm_eval"]
    for task in ("rb_ppl_en", "sandbox_grammar_en", "dist_mc", "dist_gen"):
        assert task in lm["results"], task
    _close(one["results"], lm["results"])
    for task, samples in one["samples"].items():
        assert [s["doc_id"] for s in lm["samples"][task]] == [s["doc_id"] for s in samples]
        _close(samples, lm["samples"][task], task)
    assert len(one["samples"]["dist_mc"]) == len(MC_DOCS)
    assert len(one["samples"]["rb_ppl_en"]) == len(TEXTS["en"])


# --- the pipeline's side: rank 0 leads, the helpers serve ---

RUN = {"importance": {}}  # the run config a message carries (the helpers' model is fixed here)


def _changed(model) -> None:
    """An intervention's change of rank 0's weights: a few entries (one made -0.0), a whole
    matrix."""
    with torch.no_grad():
        w = model.model.layers[0].mlp.up_proj.weight
        w[:2] = 0.0
        w[2, 0] = -0.0
        model.lm_head.weight.mul_(1.5)


def _pipeline_rank(rank: int, world: int, store: str, tmp: str) -> None:
    from transformers import AutoTokenizer

    _join(rank, world, store)
    tok = AutoTokenizer.from_pretrained(f"{tmp}/tok")
    model = tiny_llama(vocab_size=VOCAB)
    if rank > 0:  # as `pipeline.serve_importance`: join every evaluation rank 0 leads
        served = []

        def evaluate(run, what, args, kwargs):
            assert run == RUN
            served.append(what)
            ranks.join(model, tok, what, args, kwargs)

        distributed.serve(lambda run: model, {ranks.JOIN: evaluate})
        fresh = tiny_llama(vocab_size=VOCAB).state_dict()
        same = all(
            torch.equal(t.view(torch.int32), fresh[k].view(torch.int32))
            for k, t in model.state_dict().items()
        )
        with open(f"{tmp}/helper{rank}.json", "w") as f:
            json.dump({"served": served, "same": same}, f)
        return
    _changed(model)
    run, kw = RUN, {"max_length": MAX_LENGTH, "batch_size": 2}
    ppl = ranks.jointly(run, "perplexity", model, tok, TEXTS, progress=False, **kw)
    out = {"ppl": asdict(ppl["en"])}
    lm = ranks.jointly(run, "lm_eval", model, tok, ["rb_ppl"], include_path=f"{tmp}/tasks", **kw)
    out["lm_eval"] = lm["results"]["rb_ppl_en"]["word_perplexity,none"]
    layer = model.model.layers[1].mlp
    handle = layer.register_forward_hook(lambda m, i, o: o * 0)  # as intervention=ablate
    try:
        hooked = ranks.jointly(run, "perplexity", model, tok, TEXTS, progress=False, **kw)
        out["hooked"] = asdict(hooked["en"])
    finally:
        handle.remove()
    # the helpers' models are the loaded ones again: importance after evaluation is unchanged
    windows = {"en": torch.randint(3, VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))}
    fresh = tiny_llama(vocab_size=VOCAB)
    distributed.lead(run, windows, "taylor", {"batch_size": 1})
    from regionbench.importance.compute import iter_scores

    scores = dict(iter_scores(fresh, windows, "taylor", progress=False, batch_size=1))
    out["scores"] = float(sum(t.double().sum() for t in scores["en"].values()))
    distributed.release()
    with open(f"{tmp}/lead.json", "w") as f:
        json.dump(out, f)


def test_helpers_evaluate_the_changed_model_and_get_their_own_back(tmp_path, tok, one_thread):
    from regionbench.importance.compute import iter_scores

    folder, tok = _prepared(tmp_path, tok)
    model = tiny_llama(vocab_size=VOCAB)
    _changed(model)
    kw = {"max_length": MAX_LENGTH, "batch_size": 2}
    single = asdict(perplexity(model, tok, TEXTS, progress=False, **kw)["en"])
    lm = harness.run_lm_eval(model, tok, ["rb_ppl"], include_path=folder, **kw)
    layer = model.model.layers[1].mlp
    handle = layer.register_forward_hook(lambda m, i, o: o * 0)
    hooked = asdict(perplexity(model, tok, TEXTS, progress=False, **kw)["en"])
    handle.remove()
    windows = {"en": torch.randint(3, VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))}
    fresh = tiny_llama(vocab_size=VOCAB)
    scores = dict(iter_scores(fresh, windows, "taylor", progress=False, batch_size=1))

    _spawn(_pipeline_rank, 3, tmp_path)
    lead = json.loads((tmp_path / "lead.json").read_text())
    assert json.loads(json.dumps(lead["ppl"])) == json.loads(json.dumps(single))
    assert lead["hooked"] == json.loads(json.dumps(hooked)) and hooked != single
    word = lm["results"]["rb_ppl_en"]["word_perplexity,none"]
    assert lead["lm_eval"] == pytest.approx(word, rel=LM_EVAL_REL)
    expected = float(sum(t.double().sum() for t in scores["en"].values()))
    assert lead["scores"] == pytest.approx(expected, rel=1e-5)
    for r in (1, 2):
        helper = json.loads((tmp_path / f"helper{r}.json").read_text())
        assert helper == {"served": ["perplexity", "lm_eval"], "same": True}  # not the hooked


def _failing_rank(rank: int, world: int, store: str, tmp: str) -> None:
    _join(rank, world, store)

    def compute():
        if rank == 1:
            raise MemoryError("out of memory on this one")
        return rank

    try:
        ranks.gathered(compute)
    except RuntimeError as err:
        message = str(err)
    else:
        message = "no error"
    assert ranks.gathered(lambda: rank) == list(range(world))  # the group still works
    with open(f"{tmp}/fail{rank}.txt", "w") as f:
        f.write(message)
    torch.distributed.destroy_process_group()


def test_a_failing_rank_fails_every_rank_with_its_error(tmp_path):
    _spawn(_failing_rank, 3, tmp_path)
    for r in range(3):
        message = (tmp_path / f"fail{r}.txt").read_text()
        assert message == "evaluation failed on rank 1: MemoryError: out of memory on this one"


def _helper_fails_rank(rank: int, world: int, store: str, tmp: str) -> None:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    _join(rank, world, store)
    tok = AutoTokenizer.from_pretrained(f"{tmp}/tok")
    model = tiny_llama(vocab_size=VOCAB)
    if rank > 0:

        def broken(self, requests, disable_tqdm=False, override_bs=None):
            raise MemoryError("CUDA out of memory (a helper)")

        HFLM._loglikelihood_tokens = broken  # this process only (forked)
        distributed.serve(
            lambda run: model, {ranks.JOIN: lambda run, *a: ranks.join(model, tok, *a)}
        )
        return
    kw = {"max_length": MAX_LENGTH, "batch_size": 2}
    with pytest.raises(RuntimeError, match=r"rank [12]: MemoryError: CUDA out of memory"):
        ranks.jointly(RUN, "lm_eval", model, tok, ["dist_mc"], include_path=f"{tmp}/tasks", **kw)
    ppl = ranks.jointly(RUN, "perplexity", model, tok, TEXTS, progress=False, **kw)  # serving on
    distributed.release()
    with open(f"{tmp}/after.json", "w") as f:
        json.dump(asdict(ppl["en"]), f)


def test_a_helper_failing_in_lm_eval_fails_the_call_and_serves_on(tmp_path, tok, one_thread):
    _, tok = _prepared(tmp_path, tok)
    kw = {"max_length": MAX_LENGTH, "batch_size": 2}
    single = asdict(
        perplexity(tiny_llama(vocab_size=VOCAB), tok, TEXTS, progress=False, **kw)["en"]
    )
    _spawn(_helper_fails_rank, 3, tmp_path)
    assert json.loads((tmp_path / "after.json").read_text()) == json.loads(json.dumps(single))


def test_deal_covers_every_item_once():
    for n in (0, 1, 2, 7, 11):
        for world in (1, 2, 3):
            shares = [list(ranks.deal(n, r, world)) for r in range(world)]
            assert sorted(k for s in shares for k in s) == list(range(n))
            assert ranks.in_order([[f"x{k}" for k in s] for s in shares], n) == [
                f"x{k}" for k in range(n)
            ]
