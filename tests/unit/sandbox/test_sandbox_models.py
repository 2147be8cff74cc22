"""Sandbox models: tokenizer, HF folder round trip, reproducible and atomic builds that resume
from their checkpoints with the same bytes (sandbox-test)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from regionbench import sandbox
from regionbench.common.cache import fingerprint_model
from regionbench.sandbox import corpus, languages, models, pretraining
from regionbench.sandbox.__main__ import sample_lines

NAME = "sandbox-test"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, sandbox.ensure_sandbox_model(NAME, cache, progress=False)


def test_folder_loads_through_auto_classes(built):
    _, folder = built
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert len(tok) == model.config.vocab_size == sandbox.SANDBOX_MODELS[NAME].vocab_size
    meta = sandbox.read_metadata(folder)
    assert meta["weights_sha256"] == fingerprint_model(model, full=True)
    assert meta["final_loss"] < meta["first_loss"] < math.log(model.config.vocab_size) + 1
    with torch.no_grad():
        out = model(**tok(["va tukide.", "τηθοχινω θω"], padding=True, return_tensors="pt"))
    assert torch.isfinite(out.logits).all()


def test_tokenizer_is_llama_like_byte_level_bpe(built):
    _, folder = built
    tok = AutoTokenizer.from_pretrained(folder)
    texts = corpus.generate("eval", langs=list(languages.LANGUAGES), n_docs=1)
    for lang, (doc,) in texts.items():  # held-out scripts too: byte-level never needs <unk>
        ids = tok(doc)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
        assert tok.eos_token_id not in ids
        assert ids[1:] == tok(doc, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == doc, lang


def test_rebuild_with_same_seed_reproduces_weights_and_other_seed_does_not(built):
    cache, folder = built
    first = sandbox.read_metadata(folder)["weights_sha256"]
    tokenizer_json = (folder / "tokenizer.json").read_bytes()
    again = sandbox.ensure_sandbox_model(NAME, cache, force=True, progress=False)
    assert again == folder
    assert sandbox.read_metadata(again)["weights_sha256"] == first
    assert (again / "tokenizer.json").read_bytes() == tokenizer_json
    other = sandbox.ensure_sandbox_model(NAME, cache, progress=False, seed=1)
    assert other != folder and sandbox.read_metadata(other)["weights_sha256"] != first
    assert (other / "tokenizer.json").read_bytes() == tokenizer_json  # one world, one tokenizer
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_cached_model_is_not_rebuilt(built, monkeypatch):
    cache, folder = built

    def boom(*args, **kwargs):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(models, "build_sandbox_model", boom)
    assert sandbox.ensure_sandbox_model(NAME, cache, progress=False) == folder


def test_folder_name_encodes_recipe_and_seed(tmp_path, monkeypatch):
    path = sandbox.sandbox_path(NAME, tmp_path)
    assert path.name.startswith(f"{NAME}-v{models.RECIPE_VERSION}-") and path.name.endswith("seed0")
    assert sandbox.sandbox_path(NAME, tmp_path, seed=2) != path
    assert sandbox.sandbox_path("sandbox-s", tmp_path) != path
    changed = replace(sandbox.SANDBOX_MODELS[NAME], lr=1e-4)
    monkeypatch.setitem(sandbox.SANDBOX_MODELS, NAME, changed)
    assert sandbox.sandbox_path(NAME, tmp_path) != path


def test_interrupted_build_leaves_nothing_that_loads(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False)
    final = sandbox.sandbox_path(NAME, tmp_path)
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir()] == [f"{final.name}.lock"]
    monkeypatch.undo()
    # A killed process leaves its temporary folder behind; the next build clears it.
    stale = final.parent / f".{final.name}.tmp-99999"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    assert sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False) == final
    assert sandbox.is_complete(final) and not stale.exists()


def test_two_processes_build_once(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "regionbench.sandbox",
        "build",
        NAME,
        "--quiet",
        "--cache-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = {out.splitlines()[0] for out, _ in outs}
    assert folders == {str(sandbox.sandbox_path(NAME, tmp_path))}
    assert sum(f"built {NAME}" in err for _, err in outs) == 1


def test_model_sizes():
    sizes = {name: models.count_parameters(name) for name in sandbox.SANDBOX_MODELS}
    assert sizes["sandbox-test"] < 100_000
    assert 200_000 <= sizes["sandbox-s"] <= 450_000
    assert 1_000_000 <= sizes["sandbox-m"] <= 2_000_000
    assert 5_000_000 <= sizes["sandbox-l"] <= 8_000_000
    assert 7_000_000 <= sizes["bible-s"] <= 8_000_000


def test_the_corpus_field_leaves_the_sandbox_models_their_folders():
    # Folder names published before the recipes learnt their corpus (the bible-s change).
    digests = {name: models.recipe_digest(name) for name in ("sandbox-test", "sandbox-m")}
    assert digests == {"sandbox-test": "2ba10157", "sandbox-m": "6fbce04c"}
    assert models.SANDBOX_MODELS["bible-s"].corpus == "bible"


def test_unknown_model_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown sandbox model 'sandbox-xl': did you mean"):
        sandbox.ensure_sandbox_model("sandbox-xl", tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "regionbench.sandbox",
            "build",
            "sandbox-q",
            "--cache-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown sandbox model 'sandbox-q'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sample_prints_one_line_per_language():
    lines = sample_lines()
    assert len(lines) == len(languages.LANGUAGES)
    assert [line.split()[0] for line in lines] == list(languages.LANGUAGES)


def test_build_leaves_torch_global_state_alone(tmp_path):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False, seed=5)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory


def _damaged_copy(built, tmp_path, damage):
    """A copy of the built model in a cache of its own, damaged by `damage(folder)`."""
    import shutil

    cache, folder = built
    copy = sandbox.sandbox_path(NAME, tmp_path)
    shutil.copytree(folder, copy)
    damage(copy)
    return copy


def _truncate(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _edit_weight(folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"][0, 0] += 1.0
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


DAMAGES = [
    (_truncate, "model.safetensors has \\d+ bytes, not \\d+: truncated or replaced"),
    (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (_edit_weight, "model.safetensors does not match its sha256: edited or corrupt"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGES)
def test_a_damaged_folder_is_one_line_naming_the_rebuild_command(built, tmp_path, damage, reason):
    import re

    from regionbench.models.loading import load_model

    copy = _damaged_copy(built, tmp_path, damage)
    hint = f"rebuild it with: python -m regionbench.sandbox build {NAME} --force --cache-dir "
    for load in (
        lambda: sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False),
        lambda: load_model(NAME, cache_dir=tmp_path, progress=False),
    ):
        with pytest.raises(ValueError) as err:
            load()
        message = str(err.value)
        assert re.fullmatch(
            f"sandbox model folder '{re.escape(str(copy))}' is damaged \\({reason}\\); "
            f"{re.escape(hint)}{re.escape(str(tmp_path.resolve()))}",
            message,
        ), message


def test_an_older_build_without_checksums_is_still_checked(built, tmp_path):
    import json

    def older(folder):
        meta = json.loads((folder / models.METADATA).read_text())
        del meta["files"]
        (folder / models.METADATA).write_text(json.dumps(meta))

    copy = _damaged_copy(built, tmp_path, older)
    assert sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False) == copy  # still fine
    _truncate(copy)
    with pytest.raises(ValueError, match="is damaged \\(SafetensorError: .*; rebuild it with"):
        sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False)


def test_the_rebuild_command_repairs_the_folder(built, tmp_path):
    copy = _damaged_copy(built, tmp_path, _truncate)
    with pytest.raises(ValueError) as err:
        sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False)
    command = str(err.value).split("rebuild it with: ")[1].split()
    assert command[:3] == ["python", "-m", "regionbench.sandbox"]
    proc = subprocess.run(
        [sys.executable, *command[1:], "--quiet"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False) == copy
    _, folder = built
    assert (copy / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_build_without_force_on_a_damaged_folder_is_one_line(built, tmp_path, capsys):
    from regionbench.sandbox.__main__ import main

    _damaged_copy(built, tmp_path, _truncate)
    with pytest.raises(SystemExit) as err:
        main(["build", NAME, "--cache-dir", str(tmp_path), "--quiet"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sandbox model folder ")
    assert lines[0].endswith(f"--force --cache-dir {tmp_path.resolve()}")


# --- determinism across threads, checkpoints and resume ------------------------------------------

THREADED_BUILD = (
    "import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
    "from regionbench.sandbox.__main__ import main; "
    "sys.exit(main(['build', sys.argv[2], '--quiet', '--cache-dir', sys.argv[3]]))"
)


def test_builds_on_one_and_two_threads_give_the_same_bytes(built, tmp_path):
    """The issue: a rebuild with one thread must give the published weights. Each build runs in
    a process of its own, set to 1 or 2 threads every way a caller can (torch, OpenMP, MKL, the
    tokenizers' thread pool), and must give the same weights, tokenizer and files as each other
    and as the in-process build (made under the test session's 1 thread)."""
    folders, procs = [], []
    for threads in (1, 2):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "RAYON_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false",
            "PYTHONWARNINGS": "ignore",
        }
        cache = tmp_path / f"threads{threads}"
        cmd = [sys.executable, "-c", THREADED_BUILD, str(threads), NAME, str(cache)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
        folders.append(sandbox.sandbox_path(NAME, cache))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _, reference = built
    want = sandbox.read_metadata(reference)
    for folder, (out, _) in zip(folders, outs, strict=True):
        meta = sandbox.read_metadata(folder)
        assert meta["weights_sha256"] == want["weights_sha256"]
        assert meta["threads"] == models.BUILD_THREADS
        for fname in ("model.safetensors", "tokenizer.json", "config.json"):
            assert (folder / fname).read_bytes() == (reference / fname).read_bytes(), fname
        assert f"weights sha256 {want['weights_sha256']}" in out.decode()  # published in full


def _interrupt_at(monkeypatch, step, how="raise"):
    """Make the next sandbox builds stop at the end of step `step`: by an exception from inside
    the loop (a crash, a kill: only the periodic checkpoints survive) or by a real SIGINT."""
    import functools
    import signal

    def hook(done):
        if done == step:
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt

    build = functools.partial(models.build_sandbox_model, on_step=hook)
    monkeypatch.setattr(models, "build_sandbox_model", build)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A cache holding only the checkpoint of a sandbox-test build that checkpoints every 4
    steps and was stopped by an exception at the end of step 6: it resumes at step 4."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("interrupted")
        mp.setattr(pretraining, "CHECKPOINT_EVERY", 4)
        _interrupt_at(mp, 6)
        with pytest.raises(KeyboardInterrupt):
            sandbox.ensure_sandbox_model(NAME, cache, progress=False)
    return cache


def _copy_cache(src, dst):
    import shutil

    shutil.copytree(src / "sandbox", dst / "sandbox")
    final = sandbox.sandbox_path(NAME, dst)
    return final, final.parent / f".{final.name}.checkpoint"


def test_a_checkpoint_never_looks_like_a_model(interrupted, tmp_path):
    import json

    from regionbench.models.loading import load_model

    final, ckpt = _copy_cache(interrupted, tmp_path)
    assert sorted(p.name for p in final.parent.iterdir()) == [ckpt.name, f"{final.name}.lock"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["state-000004.safetensors", "state.json"]
    assert not sandbox.is_complete(ckpt) and not final.exists()
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    from regionbench.sandbox.__main__ import info_lines

    assert "a build was interrupted at step 4: it resumes" in "\n".join(info_lines(NAME, tmp_path))
    # Loading resumes the build; nothing half-trained is ever loaded.
    model, _ = load_model(NAME, cache_dir=tmp_path, progress=False)
    assert sandbox.is_complete(final) and not ckpt.exists()
    assert sandbox.read_metadata(final)["resumed_at_step"] == 4


def test_an_interrupted_build_resumes_with_the_bytes_of_an_uninterrupted_one(
    built, interrupted, tmp_path, caplog
):
    import logging
    import re

    _, reference = built
    final, ckpt = _copy_cache(interrupted, tmp_path)
    with caplog.at_level(logging.INFO, logger="regionbench.sandbox"):
        assert sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False) == final
    assert re.search(
        f"{NAME} is not in the cache: resuming its interrupted pre-training at step 4 of 12 "
        f"\\(about \\d+ (s|min) left on this machine\\), then cached in {re.escape(str(final))}$",
        caplog.text,
        re.M,
    ), caplog.text
    meta, want = sandbox.read_metadata(final), sandbox.read_metadata(reference)
    assert meta["weights_sha256"] == want["weights_sha256"]
    assert meta["resumed_at_step"] == 4 and want["resumed_at_step"] is None
    assert meta["first_loss"] == want["first_loss"] and meta["final_loss"] == want["final_loss"]
    for fname in want["files"]:
        assert (final / fname).read_bytes() == (reference / fname).read_bytes(), fname
    assert not ckpt.exists()  # spent once the folder is published


@pytest.fixture
def sigint_default():
    """Ctrl-C as in a terminal: a suite started with `nohup` or `&` inherits SIGINT ignored."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_checkpoints_the_step_it_arrives_in(
    built, tmp_path, monkeypatch, caplog, sigint_default
):
    """A real SIGINT in the middle of step 7 (no periodic checkpoints): the step ends, is saved,
    then KeyboardInterrupt unwinds as usual; the next build resumes at step 7, same bytes."""
    import json
    import logging
    import signal

    monkeypatch.setattr(pretraining, "CHECKPOINT_EVERY", 0)
    monkeypatch.setattr(pretraining, "CHECKPOINT_SECONDS", float("inf"))
    _interrupt_at(monkeypatch, 7, how="sigint")
    with (
        caplog.at_level(logging.INFO, logger="regionbench.sandbox"),
        pytest.raises(KeyboardInterrupt),
    ):
        sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handed back
    final = sandbox.sandbox_path(NAME, tmp_path)
    ckpt = final.parent / f".{final.name}.checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 7 and not final.exists()
    assert (
        f"building {NAME} interrupted at step 7 of 12: checkpoint saved in {ckpt}, building it again"
        in caplog.text
    )
    monkeypatch.undo()
    sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False)
    _, reference = built
    assert sandbox.read_metadata(final)["resumed_at_step"] == 7
    assert (final / "model.safetensors").read_bytes() == (
        reference / "model.safetensors"
    ).read_bytes()


def _corrupt(ckpt):
    path = ckpt / "state-000004.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _other_torch(ckpt):
    import json

    state = json.loads((ckpt / "state.json").read_text())
    state["identity"]["torch"] = "0.1.0"
    (ckpt / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_corrupt, "state-000004.safetensors does not match its sha256: edited or corrupt"),
        (_other_torch, "made with another torch"),
        (None, "--force"),
    ],
)
def test_an_unusable_or_forced_away_checkpoint_starts_over(
    built, interrupted, tmp_path, caplog, spoil, reason
):
    import logging

    final, ckpt = _copy_cache(interrupted, tmp_path)
    if spoil is not None:
        spoil(ckpt)
    with caplog.at_level(logging.INFO, logger="regionbench.sandbox"):
        sandbox.ensure_sandbox_model(NAME, tmp_path, progress=False, force=spoil is None)
    if spoil is not None:
        assert f"sandbox checkpoint {ckpt} cannot be used ({reason}): starting over" in caplog.text
    assert "pre-training it once" in caplog.text and "resuming" not in caplog.text
    _, reference = built
    meta = sandbox.read_metadata(final)
    assert meta["resumed_at_step"] is None and not ckpt.exists()
    assert meta["weights_sha256"] == sandbox.read_metadata(reference)["weights_sha256"]


def test_held_signals_wait_for_the_step_and_go_to_the_previous_handler(sigint_default):
    import signal

    from regionbench.sandbox.checkpoint import HeldSignals

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with HeldSignals() as held:
            os.kill(os.getpid(), signal.SIGTERM)
            assert held.received == [signal.SIGTERM] and seen == []  # held, not delivered
            with pytest.raises(KeyboardInterrupt):  # the handler returned: the build still stops
                held.deliver()
            assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_info_prints_recipe_sha256_and_build_time(built, capsys):
    from regionbench.sandbox.__main__ import main

    cache, folder = built
    meta = sandbox.read_metadata(folder)
    assert main(["info", NAME, "sandbox-s", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"  weights  sha256 {meta['weights_sha256']}\n" in out
    sha = meta["files"]["model.safetensors"]["sha256"]
    assert f"  file     sha256 {sha}  model.safetensors\n" in out
    assert f"in {meta['build_seconds']} s" in out and "steps=12" in out
    assert "(not built: python -m regionbench.sandbox build sandbox-s)" in out
