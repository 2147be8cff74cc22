"""Shared fixtures: an isolated cache and MLflow store per session, offline hubs, the real Hydra
config composed and shrunk to a test-sized sandbox model."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# Offline before any test module is collected: huggingface_hub and datasets read these once, when
# first imported (a module that imports transformers at collection time would otherwise leave
# every later hub lookup of the session online, each waiting ~20 s for a network that is not
# there, whatever a fixture sets afterwards).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE)

# A test job: the real config at the size of the debug preset (conf/debug/default.yaml).
SMALL = ["+debug=default"]
# A freeze job that trains until it is stopped: in flight whenever a test kills its sweep.
ENDLESS = [
    "ratio=0",
    "intervention=freeze",
    "intervention.steps=1000000",
    "intervention.eval_every=0",
    "intervention.train_docs=20",
    "intervention.batch_size=2",
    "intervention.seq_len=32",
]


def run_cli(args, cwd, cache_dir, timeout=600, launcher=None, env=None):
    """`python -m regionbench ARGS` (or `launcher + ["-m", "regionbench"]`, e.g. torchrun) in
    `cwd` with the cache `cache_dir`, as a user would run it; the completed process."""
    import subprocess
    import sys

    env = dict(os.environ, REGIONBENCH_CACHE=str(cache_dir), PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [*(launcher or [sys.executable]), "-m", "regionbench", *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Never touch the user's cache or the network from a test."""
    cache = tmp_path_factory.mktemp("rbcache")
    saved = dict(os.environ)
    os.environ.update(
        {
            "REGIONBENCH_CACHE": str(cache),
            **OFFLINE,
            "TOKENIZERS_PARALLELISM": "false",
            "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        }
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # test models are tiny: one thread beats two contending ones
    yield cache
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def cache_dir(_isolated_env) -> Path:
    return _isolated_env


@pytest.fixture(scope="session")
def sandbox_test_dir(cache_dir) -> Path:
    """The test-sized sandbox model, built once per session through the real build path."""
    from regionbench.sandbox import ensure_sandbox_model

    return ensure_sandbox_model("sandbox-test", cache_dir, progress=False)


def compose(overrides: list[str]):
    """The real Hydra config with `overrides` (what `python -m regionbench ...` would build)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from regionbench.config import register

    register()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *, filled: bool = False):
    """A tmpfs of `size` (e.g. "256k") mounted on `folder` for the block (unmounted after it);
    `filled`: a file takes all of its space, so the next write meets a full disk. Skips the test
    where mounting is not permitted (not root, a container without CAP_SYS_ADMIN)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() or mount.returncode})")
    try:
        if filled:
            fill(folder)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> None:
    """Take every free byte of the filesystem under `folder`."""
    import errno

    with open(folder / ".filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


def remount(folder: Path, options: str) -> None:
    """`mount -o remount,OPTIONS` (ro, size=4m) of a tmpfs made by `tmpfs`."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)
