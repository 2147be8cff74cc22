"""lm-evaluation-harness on the in-memory (possibly modified) model.

    results = run_lm_eval(model, tok, ["sandbox_grammar"], include_path=root)

The harness is used as a library: `HFLM(pretrained=model, tokenizer=tok)` wraps the model object
itself, so an intervention in progress is what gets evaluated. Its request cache stays off: the
cache key is the task's requests, not the weights, so a cached answer would belong to whichever
model filled the cache. Every task is scored as `lm_eval --model hf` scores it, BOS included
(see `run_lm_eval`); task names and datasets are checked first by `catalog.prepare_tasks`.
Under torch.distributed, rank 0 runs the harness and every rank answers a share of its requests.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from contextlib import contextmanager, suppress
from unittest import mock

import numpy as np
import torch

from regionbench.common.torchtools import modes_kept
from regionbench.evaluation import ranks
from regionbench.evaluation.catalog import (
    _check_lm_eval_version,
    _quiet_lm_eval,
    _resolve,
    _task_list,
)
from regionbench.evaluation.task_files import PPL_GROUP

# How run_lm_eval sets add_bos_token; cached evaluations scored under another policy are stale.
BOS_POLICY = f"{PPL_GROUP}:False,others:lm-eval-default"


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    include_path=None,
    log_samples: bool = False,
    add_bos_token: bool | None = None,
    max_length: int | None = None,
) -> dict:
    """Evaluate the in-memory model on lm-eval tasks; returns lm-eval's results dict.

    Task names are checked before any model work. Afterwards the model's weights and the train/
    eval mode of every module, the tokenizer's padding settings and the global random states
    (which lm-eval reseeds) are as they were.

    `add_bos_token=None` scores every task as `lm_eval --model hf` does by default: the tokenizer
    decides whether a context starts with BOS (LLaMA's does, as MMLU's protocol expects). Our
    rolling-perplexity tasks (rb_ppl, rb_ppl_<lang>) are the exception and get False, as their
    template's command line says: lm-eval puts its prefix token (BOS) before every document, and
    a tokenizer that adds BOS itself would add a second one. `True` or `False` applies to every
    task (True for models that need BOS before every context, Gemma). Tasks of the two policies
    run as two `simple_evaluate` calls, merged into one dict shaped like a single call's.
    `max_length` defaults to lm-eval's choice (the model's context length).

    Called on every rank of a torch.distributed group, the ranks share the model's requests
    (`regionbench.evaluation.ranks`): rank 0 returns one process's results, the others None.
    """
    _check_lm_eval_version()
    tasks = _task_list(tasks)
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r} is not a positive integer")
    rank, world = ranks.world()
    if rank > 0:  # rank 0 runs the harness; this one answers a share of its requests
        with _restored(model, tokenizer), _quiet_lm_eval():
            return _answer_requests(model, tokenizer)

    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    parts, done = [], False
    try:
        manager = _resolve(tasks, include_path)
        with _restored(model, tokenizer), _quiet_lm_eval(), _quiet_git_lookup(), _env_info_once():
            for bos, names in _bos_policies(tasks, add_bos_token):
                settings = {
                    "batch_size": batch_size,
                    "add_bos_token": bos,
                    "max_length": max_length,
                }
                lm = HFLM(pretrained=model, tokenizer=tokenizer, **settings)
                if world > 1:
                    _deal_requests(lm, settings)
                parts.append(
                    simple_evaluate(
                        model=lm,
                        tasks=names,
                        num_fewshot=num_fewshot,
                        limit=limit,
                        use_cache=None,
                        cache_requests=False,  # keyed without the weights: never reuse
                        log_samples=log_samples,
                        task_manager=manager,
                    )
                )
        done = True
    finally:
        if world > 1:
            _announce(("done", done))
    return _merge_results(parts)


def _announce(message):
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _deal_requests(lm, settings: dict) -> None:
    """Rank 0 under torch.distributed: each request method of `lm` gives every rank its share of
    the requests and returns all the answers in the requests' order.

    Rolling and generated requests are dealt by document, round-robin. Log-likelihood requests
    are dealt once lm-eval has tokenized them, by the key its one-token cache groups them by
    (context + continuation[:-1]): a group is scored from one forward pass, and what a member
    gets from it depends on the group (lm-eval 0.4.13 reads a shorter continuation of a group
    at the first positions of the longest one's), so a group kept whole gives one process's
    answers. A multiple-choice question's choices share such a key: they stay together too."""
    rank, world = ranks.world()
    for kind in ("loglikelihood_rolling", "generate_until"):
        own = getattr(lm, kind)

        def by_document(requests, disable_tqdm: bool = False, kind=kind, own=own):
            docs = {}
            owner = [docs.setdefault((r.task_name, r.doc_id), len(docs)) % world for r in requests]
            _announce(("requests", settings, kind, [r.args for r in requests], owner))
            mine = [r for r, o in zip(requests, owner, strict=True) if o == rank]
            return _in_owner_order(ranks.gathered(_answers, own, mine, disable_tqdm), owner)

        setattr(lm, kind, by_document)

    own_loglikelihood, own_tokens = lm.loglikelihood, lm._loglikelihood_tokens

    def by_group(requests, disable_tqdm: bool = False, override_bs=None):
        groups = {}
        owner = [
            groups.setdefault(tuple(ctx + cont[:-1]), len(groups)) % world
            for _, ctx, cont in requests
        ]
        _announce(("tokens", settings, "_loglikelihood_tokens", requests, owner))
        mine = [r for r, o in zip(requests, owner, strict=True) if o == rank]
        return _in_owner_order(ranks.gathered(_answers, own_tokens, mine, disable_tqdm), owner)

    def loglikelihood(requests, disable_tqdm: bool = False):
        # lm-eval tokenizes, then scores the whole list through _loglikelihood_tokens: ours
        # while this call lasts (the rolling requests score theirs a batch at a time, undealt)
        lm._loglikelihood_tokens = by_group
        try:
            return own_loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            del lm._loglikelihood_tokens

    lm.loglikelihood = loglikelihood


def _answers(method, requests: list, disable_tqdm: bool) -> list:
    return method(requests, disable_tqdm=disable_tqdm) if requests else []


def _in_owner_order(shares: list[list], owner: list[int]) -> list:
    """Each rank's answers (in its requests' order) as one list in the requests' order."""
    answers = [iter(share) for share in shares]
    return [next(answers[o]) for o in owner]


def _answer_requests(model, tokenizer) -> None:
    """A rank > 0: answer its share of every request list rank 0's harness deals
    (`_deal_requests`) until rank 0 is done; lm-eval's results are rank 0's alone (None here,
    as `simple_evaluate` returns on its ranks > 0)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    rank, _ = ranks.world()
    lm, made_for = None, None
    while (message := _announce(None))[0] != "done":
        what, settings, method, requests, owner = message
        if made_for != settings:  # one HFLM per simple_evaluate call, as on rank 0
            lm, made_for = HFLM(pretrained=model, tokenizer=tokenizer, **settings), settings
        mine = [r for r, o in zip(requests, owner, strict=True) if o == rank]
        if what == "requests":  # request arguments; "tokens": lm-eval's tokenized requests
            mine = [Instance(request_type=method, doc={}, arguments=a, idx=0) for a in mine]
        with suppress(RuntimeError):  # a rank failed: rank 0 raises it and then says "done"
            ranks.gathered(_answers, getattr(lm, method), mine, True)
    if not message[1]:
        raise RuntimeError("lm-eval failed on rank 0 (its error is reported there)")


def cli_commands(
    pretrained: str,
    tasks: list[str],
    *,
    dtype: str,
    device: str,
    include_path=None,
    batch_size: int = 16,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    add_bos_token: bool | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> list[list[str]]:
    """The `lm_eval` command lines that score `tasks` on the model saved at `pretrained` (a
    folder or a hub id) as `run_lm_eval` scores the same model in memory: one command per BOS
    policy (`_bos_policies`: our rb_ppl tasks with `add_bos_token=False`, the others as lm-eval
    decides), the model's `dtype` ("float32", "bfloat16") and `device` given, our task folder as
    `--include_path` where a task is ours. Each is an argv list (`shlex.join` for a shell)."""
    commands = []
    for bos, names in _bos_policies(_task_list(tasks), add_bos_token):
        args = {"pretrained": pretrained, "dtype": dtype}
        args |= {"revision": revision} if revision else {}
        args |= {"trust_remote_code": True} if trust_remote_code else {}
        args |= {"add_bos_token": bos} if bos is not None else {}
        args |= {"max_length": max_length} if max_length is not None else {}
        plain = all("," not in str(v) and "=" not in str(v) for v in args.values())
        model_args = (
            ",".join(f"{k}={v}" for k, v in args.items())
            if plain
            else json.dumps(args)  # lm-eval reads a JSON object too: any path survives
        )
        argv = ["lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(names)]
        if include_path is not None:
            argv += ["--include_path", str(include_path)]
        argv += ["--batch_size", str(batch_size), "--device", device]
        if limit is not None:
            argv += ["--limit", str(limit)]
        if num_fewshot is not None:
            argv += ["--num_fewshot", str(num_fewshot)]
        commands.append(argv)
    return commands


@contextmanager
def _quiet_git_lookup():
    """`simple_evaluate` records the launch directory's git commit (`git_hash` in its results)
    by running `git describe` with the terminal as its stderr, so every evaluation started
    outside a checkout printed `fatal: not a git repository` (lm-eval 0.4.13 has no switch for
    it; EleutherAI/lm-evaluation-harness#1691, #2625). The same lookup, with git's stderr
    discarded, stands in for lm-eval's while our evaluation runs."""
    with mock.patch("lm_eval.evaluator.get_git_commit_hash", _git_commit_hash):
        yield


_ENV_INFO: dict = {}  # lm-eval's environment record, looked up once per process


@contextmanager
def _env_info_once():
    """`simple_evaluate` adds the environment to every result (`pretty_env_info`: torch's
    collect_env, which runs `pip list` and more in child processes, about 1.2 s per call); it
    is the same for every job of a process, so it is looked up once and copied after."""
    from lm_eval.loggers import utils

    def add_env_info(storage: dict) -> None:
        if not _ENV_INFO:
            utils.add_env_info(_ENV_INFO)
        storage.update(_ENV_INFO)

    with mock.patch("lm_eval.evaluator.add_env_info", add_env_info):
        yield


def _git_commit_hash() -> str | None:
    """lm-eval's `get_git_commit_hash`: `git describe --always` in the working directory, else
    the commit its `.git` folder names, else None; git's complaint goes nowhere."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(
            ["git", "describe", "--always"], stderr=subprocess.DEVNULL, text=True
        ).strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


def _bos_policies(tasks: list[str], add_bos_token: bool | None) -> list[tuple]:
    """[(add_bos_token, tasks)], one per `simple_evaluate` call, in the order tasks first appear.

    Our rb_ppl tasks get False, every other task lm-eval's default (None), unless the caller
    chose one policy for all. Partitioned by the names asked for: a group of the caller's that
    mixed rb_ppl with other tasks would be scored under one policy.
    """
    if add_bos_token is not None:
        return [(add_bos_token, tasks)]
    parts: dict[bool | None, list[str]] = {}
    for task in tasks:
        ours = task == PPL_GROUP or task.startswith(f"{PPL_GROUP}_")
        parts.setdefault(False if ours else None, []).append(task)
    return list(parts.items())


# The per-task sections of a simple_evaluate result, in lm-eval's order; those it sorts by name.
_SECTIONS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "samples",
)
_SORTED_SECTIONS = ("configs", "versions", "n-shot", "higher_is_better")


def _merge_results(parts: list[dict]) -> dict:
    """Several `simple_evaluate` results as one: the per-task sections joined (a section no call
    has, such as `groups` or `samples`, stays absent), the run's metadata (`config`, `date`,
    environment) from the first call, since the calls differ only in `add_bos_token`."""
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for key in dict.fromkeys([*_SECTIONS, *(k for part in parts for k in part)]):
        if key not in _SECTIONS:
            merged[key] = next(part[key] for part in parts if key in part)
            continue
        if not any(key in part for part in parts):
            continue
        joined = {}
        for part in parts:
            joined.update(part.get(key) or {})
        merged[key] = dict(sorted(joined.items())) if key in _SORTED_SECTIONS else joined
    return merged


@contextmanager
def _restored(model, tokenizer):
    """Undo what HFLM and simple_evaluate change: module modes (HFLM calls model.eval()),
    the tokenizer's pad token and padding side, and the global RNGs (simple_evaluate seeds
    python, numpy and torch, which would silently reset a training loop's randomness)."""
    pad_token, padding_side = tokenizer.pad_token, tokenizer.padding_side
    rng = (
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    )
    try:
        with modes_kept(model):
            yield
    finally:
        if tokenizer.pad_token != pad_token:
            tokenizer.pad_token = pad_token
        tokenizer.padding_side = padding_side
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])
