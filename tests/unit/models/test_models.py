"""Model loading: sandbox names, local folders and hub ids go through one `from_pretrained` path."""

from __future__ import annotations

import shutil

import pytest
import torch

from regionbench.common.cache import cache_root
from regionbench.models.loading import check_model, load_model, resolve_dtype


def test_local_folder_loads_like_the_sandbox_name(sandbox_test_dir, cache_dir, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(sandbox_test_dir, folder)
    a, tok_a = load_model("sandbox-test", cache_dir=cache_dir, progress=False)
    b, tok_b = load_model(str(folder))
    assert check_model(str(folder)) == "local" and check_model("sandbox-test") == "sandbox"
    assert not a.training and not b.training
    assert next(a.parameters()).dtype == torch.float32  # fp32 on CPU by default
    ids = tok_a("a sentence", return_tensors="pt").input_ids
    assert torch.equal(ids, tok_b("a sentence", return_tensors="pt").input_ids)
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert tok_b.pad_token is not None


def test_dtype_is_explicit():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'bf61'"):
        resolve_dtype("bf61", cpu)


def test_bad_models_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, message in [
        ("sandbox-xl", "unknown sandbox model 'sandbox-xl'"),
        (str(tmp_path), "has no config.json"),
        ("./missing-folder", "model folder './missing-folder' does not exist"),
        ("meta-llama/Llama-2-7b-hf", "unknown model 'meta-llama/Llama-2-7b-hf': not a sandbox"),
    ]:
        with pytest.raises(ValueError) as err:
            check_model(name)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("REGIONBENCH_CACHE", str(tmp_path / "env"))
    assert cache_root() == (tmp_path / "env").resolve()
    assert cache_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    monkeypatch.delenv("REGIONBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == (tmp_path / ".cache" / "regionbench").resolve()


class _Planted:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_never_loaded(sandbox_test_dir, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "bin-only"
    shutil.copytree(sandbox_test_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": _Planted(marker)}, folder / "pytorch_model.bin")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError) as err:
        load_model(str(folder))
    assert str(err.value) == (
        f"model folder {str(folder)!r} has no *.safetensors weights: regionbench loads "
        "safetensors only, never pickle files such as pytorch_model.bin (convert them with "
        "model.save_pretrained(folder), which writes safetensors)"
    )
    # beside safetensors weights, a pickle file is ignored, not unpickled
    shutil.copy(sandbox_test_dir / "model.safetensors", folder / "model.safetensors")
    model, _ = load_model(str(folder))
    assert not calls and not marker.exists()
    want, _ = load_model(str(sandbox_test_dir))
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), want.parameters(), strict=True)
    )


def test_code_shipped_with_a_model_runs_only_when_trusted(sandbox_test_dir, tmp_path):
    import json

    marker = tmp_path / "ran"
    folder = tmp_path / "custom"
    shutil.copytree(sandbox_test_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "planted_llama"  # unknown to transformers: only its own code has it
    config["auto_map"] = {
        "AutoConfig": "planted.PlantedConfig",
        "AutoModelForCausalLM": "planted.PlantedModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ValueError) as err:
        load_model(str(folder))  # trust_remote_code=False: the default
    message = str(err.value)
    assert message == (
        f"cannot load model folder {str(folder)!r}: it ships its own Python code, "
        "which runs only with model.trust_remote_code=true (trust_remote_code=True); check that "
        "code first"
    )
    assert not marker.exists()
