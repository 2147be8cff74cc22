"""Unit regions and activation interventions through the real job: an ablate, fix or steer job
on the sandbox-test model changes its perplexity, yet leaves every weight bit-identical and no
hook on any module afterwards; a LAPE file is a region of the job like any other."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL, compose
from mlflow.tracking import MlflowClient

from regionbench.common.cache import fingerprint_model
from regionbench.pipeline import run_job
from regionbench.session import Session


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "intervention",
    [
        ["intervention=ablate"],
        ["intervention=fix", "intervention.lang=latn"],
        ["intervention=steer", "intervention.steer=[latn,cyrl]", "intervention.factor=4"],
    ],
    ids=["ablate", "fix", "steer"],
)
def test_an_activation_job_changes_the_model_and_leaves_weights_and_no_hooks(
    store, sandbox_test_dir, intervention
):
    cfg = compose(
        [
            *SMALL,
            "region=neurons",
            "ratio=0.1",
            "eval=ppl",
            *intervention,
            f"tracking.uri={store}",
            "tracking.experiment=units",
        ]
    )
    session = Session()
    result = run_job(cfg, name=intervention[0], session=session)
    assert result["status"] == "FINISHED", result
    loaded = session.loaded
    assert fingerprint_model(loaded.model, full=True) == loaded.fingerprint  # bit-identical
    assert _hooks(loaded.model) == 0
    m = MlflowClient(tracking_uri=store).get_run(result["run_id"]).data.metrics
    assert m["region/params"] > 0 and m["intervention/changed"] == 0  # no weight changed
    assert m["ppl_ratio/mean"] != 1.0  # the hooks were on while it was evaluated


def test_a_lape_file_is_the_jobs_region(store, sandbox_test_dir, tmp_path):
    """A file in LAPE's released format for the sandbox-test model: the job's region holds
    exactly its neurons (every entry of each: rows of gate/up, a column of down)."""
    from regionbench.models.units import neuron_units
    from regionbench.regions.region import Region

    session = Session()
    probe = compose([*SMALL, f"tracking.uri={store}"])
    blocks = len(neuron_units(session.load(_run_config(probe)).model))
    neurons = [[torch.tensor([b, 2 * b + 1]) for b in range(blocks)], [torch.tensor([0])] * blocks]
    path = tmp_path / "sandbox-test.neuron.pth"
    torch.save(neurons, path)
    cfg = compose(
        [
            *SMALL,
            "region=file",
            f"region.file={path}",
            "region.file_langs=[latn,cyrl]",
            "region.lang=latn",
            "intervention=ablate",
            "eval=ppl",
            f"tracking.uri={store}",
            "tracking.experiment=units",
        ]
    )
    result = run_job(cfg, name="lape-file", output_dir=tmp_path, session=session)
    assert result["status"] == "FINISHED", result
    client = MlflowClient(tracking_uri=store)
    mask_file = client.download_artifacts(result["run_id"], "region.safetensors", str(tmp_path))
    masks = Region.load(mask_file).masks
    model = session.loaded.model
    for b, lu in enumerate(neuron_units(model)):
        held = {int(j) for j in range(lu.count) if _holds_neuron(masks, model, b, j)}
        assert held == {b, 2 * b + 1}, b


def _run_config(cfg):
    from omegaconf import OmegaConf

    from regionbench.config import RunConfig

    raw = OmegaConf.to_container(cfg, resolve=True)
    raw.pop("hydra", None)
    return RunConfig.from_cfg(raw)


def _holds_neuron(masks, model, block: int, j: int) -> bool:
    """Neuron j of a sandbox (LLaMA) block: row j of gate/up and column j of down, wholly."""
    p = f"model.layers.{block}.mlp"
    return bool(
        masks[f"{p}.gate_proj.weight"][j].all()
        and masks[f"{p}.up_proj.weight"][j].all()
        and masks[f"{p}.down_proj.weight"][:, j].all()
    )
