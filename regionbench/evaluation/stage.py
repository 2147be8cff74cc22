"""Evaluation as a pipeline stage: the lm-eval tasks a run asks for, prepared before any model
work; the unmodified model's evaluation (the baseline every ratio is taken against), cached on
disk; and each evaluation of a (modified) model as named metrics.

    tasks = prepare(run, eval_texts)                  # None when no lm-eval task is asked for
    check_texts(run, tok, eval_texts, context)        # once the tokenizer is there
    base = baseline(run, model, tok, eval_texts, tasks, model_fp, cache_dir, memo)
    metrics, results = evaluate(run, model, tok, eval_texts, tasks, base)
    metrics, table = generations(run, model, tok, eval_texts, base, clock)  # {} unless asked

Perplexity is the corpus-level rolling one (`perplexity.perplexity`); `eval.ppl_protocol=paper`
adds the authors' (`perplexity.paper_perplexity`) beside it, in the baseline and in every
evaluation, as `ppl_paper/<lang>` and `ppl_paper_ratio/<lang>`. `eval.generation.enabled=true`
adds what the model writes (`generation`): the unmodified model's continuations are part of the
cached baseline, the model's own give `gen/*` and the before/after table.

Under torchrun the helper ranks evaluate perplexity and lm-eval with rank 0 (`ranks.jointly`);
generation is rank 0's alone.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from regionbench.common import names
from regionbench.common.cache import JsonCache, cache_key, fingerprint_texts
from regionbench.common.choices import check_choice
from regionbench.config import RunConfig
from regionbench.data.languages import FLORES200_CODES, FLORES_CODES
from regionbench.data.sources import SOURCES, default_tasks, source

log = logging.getLogger(__name__)
PPL_PROTOCOLS = {
    "rolling": "every document whole, rolling windows, exp(total NLL / total tokens) (lm-eval's)",
    "paper": "also the authors': documents of <= eval.paper_seq_len tokens in batches of "
    "eval.paper_batch_size, exp of the mean batch loss (ppl_paper/<lang>)",
}
# Bump when the same inputs would give another baseline (the task files or the BOS policy).
BASELINE_FORMAT = 2  # 2: per-document totals, for the paired bootstrap


@dataclass(frozen=True)
class Tasks:
    """lm-eval tasks ready to run: our task folder (`include_path`), the task names, and what
    our tasks were written from (`task_files.write_tasks`' inputs, to write them elsewhere)."""

    root: Path
    names: tuple[str, ...]
    written_from: dict = field(default_factory=dict, compare=False, repr=False)

    def ours(self) -> bool:
        """Whether a task (or group) asked for is one of ours, read from our task folder."""
        return bool({p.stem for p in self.root.glob("*.yaml")} & set(self.names))


def lm_eval_tasks(run: RunConfig) -> tuple[str, ...]:
    """`eval.lm_eval.tasks`, or (null) the tasks the data source brings along."""
    tasks = run.eval.lm_eval.tasks
    return default_tasks(run.data.source) if tasks is None else tuple(tasks)


def check(run: RunConfig) -> None:
    """`eval.*` values, before any data or model work (task names: `prepare`)."""
    ev, le = run.eval, run.eval.lm_eval
    for key, value in (
        ("eval.batch_size", ev.batch_size),
        ("eval.lm_eval.batch_size", le.batch_size),
        ("eval.lm_eval.grammar_pairs", le.grammar_pairs),
        ("eval.max_length", ev.max_length),
        ("eval.paper_batch_size", ev.paper_batch_size),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{key} {value!r} must be an integer >= 1")
    check_choice("eval.ppl_protocol", ev.ppl_protocol, PPL_PROTOCOLS)
    if ev.paper_seq_len is not None and (
        isinstance(ev.paper_seq_len, bool)
        or not isinstance(ev.paper_seq_len, int)
        or ev.paper_seq_len < 2
    ):
        raise ValueError(f"eval.paper_seq_len {ev.paper_seq_len!r} must be an integer >= 2")
    limit = le.limit  # lm-eval: below 1 a fraction of each task's examples, else a count
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, int | float)
        or not 0 < limit < math.inf
        or (limit >= 1 and limit != int(limit))
    ):
        raise ValueError(
            f"eval.lm_eval.limit {limit!r} must be a count of examples per task >= 1 (e.g. 100) "
            "or a fraction in (0, 1) (e.g. 0.1); null = every example"
        )
    shots = le.num_fewshot
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 0):
        raise ValueError(
            f"eval.lm_eval.num_fewshot {shots!r} must be an integer >= 0; null = each task's own"
        )
    check_source_tasks(run)
    from regionbench.data.sources import eval_langs
    from regionbench.evaluation import generation

    natural = source(run.data.source).identify is None
    gen = ev.generation
    generation.check(gen, natural=natural, langs=eval_langs(run) if gen.enabled else ())


def check_source_tasks(run: RunConfig) -> None:
    """A task that a data source brings along (`Source.tasks`: sandbox_grammar, written from the
    sandbox's grammar) exists only with that source: say so before any work, not "unknown task"
    after the model has loaded."""
    for task in run.eval.lm_eval.tasks or ():
        for entry in SOURCES.values():
            if entry.name == run.data.source or not isinstance(task, str):
                continue
            if any(task == own or task.startswith(f"{own}_") for own in entry.tasks):
                raise ValueError(
                    f"lm-eval task {task!r} exists only with data={entry.name} (it is written "
                    f"from that source's own text): drop it from eval.lm_eval.tasks, or run "
                    f"with data={entry.name}"
                )


def prepare(run: RunConfig, eval_texts: dict[str, list[str]]) -> Tasks | None:
    """Write our lm-eval tasks for this run's data (once per content and process), expand
    per-language task templates, and check every task name and hub dataset. Task files never go to
    the cache: anyone who can write a shared cache could run code in every job."""
    from regionbench.evaluation import catalog, task_files

    tasks = list(lm_eval_tasks(run))
    if not tasks:
        return None
    grammar = source(run.data.source).grammar
    pairs = grammar(list(eval_texts), run.eval.lm_eval.grammar_pairs) if grammar else None
    # a folder private to this process, never the shared cache: lm-eval reads code references
    root = task_files.task_folder(ppl_texts=eval_texts, grammar_pairs=pairs)
    if any("{" in t for t in tasks):
        codes = [
            {
                "lang": lang,
                "flores": FLORES_CODES.get(lang, lang),
                "flores200": FLORES200_CODES.get(lang, lang),
            }
            for lang in eval_texts
        ]
        tasks, skipped = catalog.expand_tasks(tasks, codes, root)
        if skipped:
            log.info("lm-eval has no task %s: skipped", ", ".join(skipped))
        if not tasks:
            raise ValueError(
                f"no lm-eval task of {list(lm_eval_tasks(run))} covers the "
                f"languages {', '.join(eval_texts)}"
            )
    catalog.prepare_tasks(tasks, root)  # names and hub datasets, before any model work
    return Tasks(root, tuple(tasks), {"ppl_texts": eval_texts, "grammar_pairs": pairs})


def perplexities(run: RunConfig, model, tok, texts) -> dict[str, dict]:
    from regionbench.evaluation.ranks import jointly

    res = jointly(
        run.to_dict(),
        "perplexity",
        model,
        tok,
        texts,
        max_length=run.eval.max_length,
        batch_size=run.eval.batch_size,
    )
    return {lang: asdict(r) for lang, r in res.items()}


def wants_paper(run: RunConfig) -> bool:
    """Whether the run asks for the authors' perplexity beside the rolling one."""
    return run.eval.perplexity and run.eval.ppl_protocol == "paper"


def paper_seq_len(run: RunConfig, context: int) -> int:
    """`eval.paper_seq_len`, or the authors' 512 capped at the model's `context` length."""
    seq_len = run.eval.paper_seq_len or min(512, context)
    if seq_len > context:
        raise ValueError(
            f"eval.paper_seq_len {seq_len} is longer than the model's context of {context} "
            f"tokens; choose eval.paper_seq_len <= {context}"
        )
    return seq_len


def check_texts(run: RunConfig, tok, eval_texts: dict[str, list[str]], context: int) -> None:
    """With the paper protocol, every evaluation language has a document of at most
    `paper_seq_len` tokens: a one-line error as soon as the tokenizer is loaded, not after the
    importance pass."""
    if not wants_paper(run):
        return
    seq_len = paper_seq_len(run, context)
    extra = 1 + (tok.eos_token_id is not None)  # the prefix token and the EOS
    for lang, docs in eval_texts.items():
        lengths = [len(ids) + extra for ids in tok(docs, add_special_tokens=False)["input_ids"]]
        if not any(n <= seq_len for n in lengths):
            raise ValueError(
                f"eval.ppl_protocol=paper: no evaluation document of {lang!r} has at most "
                f"{seq_len} tokens (eval.paper_seq_len; the shortest of {len(docs)} has "
                f"{min(lengths, default=0)}): raise data.eval_docs or eval.paper_seq_len"
            )


def paper_perplexities(run: RunConfig, model, tok, texts) -> dict[str, dict]:
    """The authors' perplexity per language (`eval.paper_*`); {} unless the run asks for it."""
    if not wants_paper(run):
        return {}
    from regionbench.evaluation.perplexity import default_max_length
    from regionbench.evaluation.ranks import jointly

    seq_len = paper_seq_len(run, default_max_length(model, tok))
    res = jointly(
        run.to_dict(),
        "paper_perplexity",
        model,
        tok,
        texts,
        seq_len=seq_len,
        batch_size=run.eval.paper_batch_size,
        progress=False,
    )
    return {lang: asdict(r) for lang, r in res.items()}


def paper_metrics(run: RunConfig, model, tok, texts, base: dict, *, now: bool = True) -> dict:
    """`ppl_paper/*` of the model as it is (`now`), or of the unmodified model (the baseline's),
    against the baseline; {} unless the run asks for the paper protocol."""
    if not wants_paper(run):
        return {}
    ppl = paper_perplexities(run, model, tok, texts) if now else base["ppl_paper"]
    return names.paper_perplexity_metrics(ppl, base["ppl_paper"])


def lm_eval(run: RunConfig, model, tok, tasks: Tasks | None) -> tuple[dict[str, float], dict]:
    """(`lm_eval/<task>/<metric>` metrics, lm-eval's results dict)."""
    if tasks is None:
        return {}, {}
    from regionbench.evaluation.ranks import jointly

    le = run.eval.lm_eval
    results = jointly(
        run.to_dict(),
        "lm_eval",
        model,
        tok,
        list(tasks.names),
        limit=le.limit,
        num_fewshot=le.num_fewshot,
        batch_size=le.batch_size,
        include_path=tasks.root,
        log_samples=le.log_samples,
        max_length=run.eval.max_length,
    )
    return names.lm_eval_metrics(results), json.loads(json.dumps(results, default=str))


def lm_eval_command(
    run: RunConfig, model, tasks: Tasks, folder: Path | None, pretrained: str | None = None
) -> str | None:
    """The `lm_eval` command line(s) that score this run's lm-eval tasks on the model saved at
    `pretrained` (default: `model` as it was loaded, `model.name_or_path`: the sandbox folder in
    the cache, the hub id, the local folder) exactly as the run scores `model` in memory, our
    tasks written into `folder` (which must outlive the run: its artifacts); None when our tasks
    are asked for and there is no folder."""
    import shlex

    from regionbench.evaluation import task_files
    from regionbench.evaluation.harness import cli_commands

    root = None
    if tasks.ours():
        if folder is None:
            return None
        root = task_files.write_tasks(folder, **tasks.written_from)
    le = run.eval.lm_eval
    commands = cli_commands(
        pretrained or str(model.name_or_path),
        list(tasks.names),
        dtype=str(model.dtype).removeprefix("torch."),
        device=str(model.device),
        include_path=root,
        batch_size=le.batch_size,
        limit=le.limit,
        num_fewshot=le.num_fewshot,
        max_length=run.eval.max_length,
        revision=run.model.revision,
        trust_remote_code=run.model.trust_remote_code,
    )
    return "\n".join(shlex.join(argv) for argv in commands)


def baseline(
    run: RunConfig,
    model,
    tok,
    eval_texts,
    tasks: Tasks | None,
    model_fp: str,
    cache_dir: Path,
    memo: dict,
) -> dict:
    """The unmodified model's evaluation: from `memo` (this process), else from the disk cache,
    else computed once and stored in both."""
    from regionbench.evaluation.harness import BOS_POLICY

    key = cache_key(
        kind="baseline",
        model=model_fp,
        texts=fingerprint_texts(eval_texts),
        max_length=run.eval.max_length,
        perplexity=run.eval.perplexity,
        lm_eval=asdict(run.eval.lm_eval) if tasks else None,
        tasks=list(tasks.names) if tasks else None,
        bos=BOS_POLICY if tasks else None,
        format=BASELINE_FORMAT,
        **({"generation": _generation_key(run)} if run.eval.generation.enabled else {}),
        # only when asked for: the keys of baselines cached without it stay what they were
        **(
            {"paper": {"seq_len": run.eval.paper_seq_len, "batch_size": run.eval.paper_batch_size}}
            if wants_paper(run)
            else {}
        ),
    )
    if key in memo:
        return memo[key]

    def compute() -> dict:
        log.info("evaluating the unmodified model (once; cached)")
        ppl = perplexities(run, model, tok, eval_texts) if run.eval.perplexity else {}
        out = {"ppl": ppl, "lm_eval": lm_eval(run, model, tok, tasks)[0]}
        if wants_paper(run):
            out["ppl_paper"] = paper_perplexities(run, model, tok, eval_texts)
        if run.eval.generation.enabled:
            out["generation"] = generated(run, model, tok, eval_texts)
        return out

    base, hit = JsonCache(cache_dir / "baselines").get_or_compute(key, compute)
    if hit:
        log.info("baseline evaluation: cache hit")
    memo[key] = base
    return base


def evaluate(
    run: RunConfig, model, tok, eval_texts, tasks: Tasks | None, base: dict, clock, *, paper=True
) -> tuple[dict[str, float], dict]:
    """Every evaluation of the model as it is now, as metrics against `base`; and lm-eval's
    results (for the run's artifact). `paper=False` leaves out `ppl_paper/*` (a freeze run logs
    them at every evaluation step)."""
    metrics: dict[str, float] = {}
    if run.eval.perplexity:
        from regionbench.evaluation.intervals import paired_bootstrap_languages

        with clock("eval"):
            ppl = perplexities(run, model, tok, eval_texts)
            metrics |= names.perplexity_metrics(ppl, base["ppl"])
            shared = {lang: r for lang, r in ppl.items() if lang in base["ppl"]}
            if shared:  # each ratio with its interval over the evaluation documents
                base_shared = {lang: base["ppl"][lang] for lang in shared}
                parallel = source(run.data.source).parallel
                intervals = paired_bootstrap_languages(
                    base_shared, shared, seed=run.seed, parallel=parallel
                )
                if parallel and not intervals["mean"]["joint"]:
                    counts = {lang: len(r["doc_nll"]) for lang, r in shared.items()}
                    log.warning(
                        "data=%s is parallel, but its languages have different numbers of "
                        "evaluation documents (%s): the interval of each mean resamples every "
                        "language on its own (metric %s = 0)",
                        run.data.source,
                        ", ".join(f"{lang} {c}" for lang, c in counts.items()),
                        names.JOINT_INTERVAL,
                    )
                metrics |= names.interval_metrics(intervals)
            if paper:
                metrics |= paper_metrics(run, model, tok, eval_texts, base)
    results: dict = {}
    if tasks is not None:
        with clock("lm_eval"):
            lm, results = lm_eval(run, model, tok, tasks)
        metrics |= lm | names.lm_eval_ratios(lm, base["lm_eval"])
    return metrics, results


def _generation_key(run: RunConfig) -> dict:
    gen = asdict(run.eval.generation)
    del gen["enabled"], gen["table_rows"], gen["batch_size"]  # what is shown, how it is batched
    return gen


def generated(run: RunConfig, model, tok, eval_texts) -> dict[str, list[dict]]:
    """The model's continuations of every language's prompts, each with its language."""
    from regionbench.evaluation import generation

    gen = run.eval.generation
    identify = generation.identifier(
        source(run.data.source).identify, list(eval_texts), gen.min_confidence
    )
    texts = generation.continuations(
        model,
        tok,
        eval_texts,
        prompt_tokens=gen.prompt_tokens,
        new_tokens=gen.new_tokens,
        docs=gen.docs,
        batch_size=gen.batch_size,
    )
    return generation.identified(texts, identify)


def generations(run: RunConfig, model, tok, eval_texts, base: dict, clock) -> tuple[dict, dict]:
    """`gen/*` of the model as it is now, and the before/after table of continuations (the
    unmodified model's from `base`); ({}, {}) unless `eval.generation.enabled`."""
    if not run.eval.generation.enabled:
        return {}, {}
    from regionbench.evaluation import generation

    with clock("generation"):
        rows = generated(run, model, tok, eval_texts)
    table = generation.before_after(base["generation"], rows, run.eval.generation.table_rows)
    return generation.generation_metrics(rows), table
