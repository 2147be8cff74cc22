"""Region selection: exact per-matrix counts, set algebra, ties, errors, mask files."""

from __future__ import annotations

import math

import pytest
import torch

from regionbench.regions.kinds import REGION_KINDS, select
from regionbench.regions.region import Region, split_name
from regionbench.regions.select import exact_k, topk_mask

SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (7, 13),  # odd numel 91
    "model.layers.0.input_layernorm.weight": (11,),
    "model.layers.1.mlp.down_proj.weight": (10, 10),
    "model.layers.1.mlp.down_proj.bias": (10,),
}
LANGS = ("aa", "bb", "cc")


def make_scores(seed=0, langs=LANGS):
    g = torch.Generator().manual_seed(seed)
    return {lang: {n: torch.rand(s, generator=g) for n, s in SHAPES.items()} for lang in langs}


def topset(t, k, largest=True):
    """Brute force: flat indices of the k largest (smallest), ties to lower index."""
    order = sorted(
        range(t.numel()),
        key=lambda i: (-t.reshape(-1)[i].item() if largest else t.reshape(-1)[i].item(), i),
    )
    return set(order[:k])


def as_set(mask):
    return set(torch.nonzero(mask.reshape(-1)).reshape(-1).tolist())


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.99])
@pytest.mark.parametrize("region", ["core", "core_bottom", "monolingual"])
def test_per_matrix_counts_are_exact(ratio, region):
    s = make_scores()
    lang = "aa" if region == "monolingual" else None
    if region == "monolingual" and ratio == 0.99:
        # every entry of aa's top 99% is in another language's top 99%: the region is empty,
        # which is an error, not a result (issue 20, item 8)
        with pytest.raises(ValueError, match="every entry of aa's top-k is also in another"):
            select(s, ratio, region, lang=lang)
        for name, shape in SHAPES.items():  # brute force: truly empty in every matrix
            k = exact_k(ratio, math.prod(shape))
            others = topset(s["bb"][name], k) | topset(s["cc"][name], k)
            assert not topset(s["aa"][name], k) - others
        return
    r = select(s, ratio, region, lang=lang)
    assert set(r.masks) == set(SHAPES)
    for name, shape in SHAPES.items():
        mask, numel = r.masks[name], math.prod(shape)
        assert mask.dtype == torch.bool and tuple(mask.shape) == shape
        k = exact_k(ratio, numel)
        if region == "monolingual":
            assert int(mask.sum()) <= k
        else:
            assert int(mask.sum()) == k
    if ratio == 0:
        assert r.numel == 0 and r.fraction == 0.0
    assert r.total == sum(math.prod(s) for s in SHAPES.values())


def test_exact_k_reads_the_decimal():
    assert exact_k(0.29, 100) == 29  # float 0.29 * 100 == 28.999999999999996
    assert exact_k(0.01, 91) == 0 and exact_k(0.05, 91) == 4 and exact_k(0.5, 91) == 45
    assert exact_k(0.0, 10**9) == 0


def test_core_is_topk_of_summed_scores_and_disjoint_from_bottom():
    s = make_scores()
    core, bottom = select(s, 0.3, "core"), select(s, 0.3, "core_bottom")
    for name in SHAPES:
        total = sum(s[lang][name] for lang in LANGS)
        k = exact_k(0.3, total.numel())
        assert as_set(core.masks[name]) == topset(total, k)
        assert as_set(bottom.masks[name]) == topset(total, k, largest=False)
        assert not (core.masks[name] & bottom.masks[name]).any()
    assert core.meta["region"] == "core" and core.meta["ratio"] == "0.3"
    assert core.meta["languages"] == "aa,bb,cc"


def test_monolingual_set_algebra_matches_brute_force_and_is_disjoint():
    s = make_scores(seed=3)
    ratio = 0.3
    regions = {lang: select(s, ratio, "monolingual", lang=lang) for lang in LANGS}
    for name in SHAPES:
        k = exact_k(ratio, s["aa"][name].numel())
        tops = {lang: topset(s[lang][name], k) for lang in LANGS}
        for lang in LANGS:
            others = set().union(*(tops[m] for m in LANGS if m != lang))
            assert as_set(regions[lang].masks[name]) == tops[lang] - others
        for a in LANGS:
            for b in LANGS:
                if a < b:
                    assert not (regions[a].masks[name] & regions[b].masks[name]).any()
    assert regions["aa"].numel > 0
    # Restricting the languages changes what "every other language" means.
    two = select(s, ratio, "monolingual", lang="aa", langs=["aa", "bb"])
    assert two.numel >= regions["aa"].numel and two.meta["languages"] == "aa,bb"


def test_ties_take_strict_winners_first_and_are_deterministic():
    t = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0, 3.0, 2.0])
    assert as_set(topk_mask(t, 4)) == {1, 2, 3, 5}  # all four 3.0s
    two = as_set(topk_mask(t, 2, name="w"))
    assert len(two) == 2 and two <= {1, 2, 3, 5}  # two of the tied maxima, nothing else
    assert two == as_set(topk_mask(t, 2, name="w"))  # a pure function of scores and name
    bottom = as_set(topk_mask(t, 5, largest=False, name="w"))
    assert {0, 4, 6} < bottom and len(bottom - {0, 4, 6}) == 2  # 1.0, 0.0, 2.0, two of the 3.0s
    assert not two & bottom  # top 2 + bottom 5 = 7 entries: the tied 3.0s are shared out
    assert as_set(topk_mask(t, 0)) == set() and as_set(topk_mask(t, 7)) == set(range(7))
    # language-independent scores: the random control is the same whatever the language list
    shared = make_scores(langs=("x",))["x"]
    a = select({"aa": shared, "bb": shared}, 0.2, "core")
    b = select({"aa": shared}, 0.2, "core")
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in SHAPES)


@pytest.mark.parametrize("zeros", [100, 97, 60])
def test_core_and_bottom_stay_disjoint_on_ties(zeros):
    """A matrix with fewer than k non-zero scores (zero-initialised biases, a pruned model):
    core and core_bottom must still not overlap, and the core must not be the first rows."""
    shape = (10, 10)
    g = torch.Generator().manual_seed(1)
    flat = torch.zeros(100)
    flat[torch.randperm(100, generator=g)[: 100 - zeros]] = torch.rand(100 - zeros, generator=g)
    scores = {"aa": {"m.layers.0.w": flat.view(shape)}, "bb": {"m.layers.0.w": torch.zeros(shape)}}
    for ratio in (0.05, 0.3, 0.5):
        core = select(scores, ratio, "core").masks["m.layers.0.w"]
        bottom = select(scores, ratio, "core_bottom").masks["m.layers.0.w"]
        k = exact_k(ratio, 100)
        assert int(core.sum()) == int(bottom.sum()) == k
        assert not (core & bottom).any(), (zeros, ratio)
        nonzero = set(torch.nonzero(flat).reshape(-1).tolist())
        assert as_set(core) >= (nonzero if len(nonzero) <= k else set())  # winners go first
        if zeros == 100:
            assert as_set(core) != set(range(k))  # not "the first rows"


@pytest.mark.parametrize("ratio", [1, 1.0, -0.1, 1.5, float("nan"), "0.1", True])
def test_bad_ratio_is_a_one_line_error(ratio):
    with pytest.raises(ValueError, match=r"ratio .* is outside \[0, 1\)") as e:
        select(make_scores(), ratio)
    assert "\n" not in str(e.value)


def test_bad_region_and_lang_errors():
    s = make_scores()
    with pytest.raises(ValueError, match="unknown region 'cor': did you mean 'core'"):
        select(s, 0.1, "cor")
    with pytest.raises(ValueError, match="needs lang; choices: aa, bb, cc"):
        select(s, 0.1, "monolingual")
    with pytest.raises(ValueError, match="unknown language 'dd'.*choices: aa, bb, cc"):
        select(s, 0.1, "monolingual", lang="dd")
    with pytest.raises(ValueError, match="unknown language 'cc'.*choices: aa, bb"):
        select(s, 0.1, "monolingual", lang="cc", langs=["aa", "bb"])
    with pytest.raises(ValueError, match="unknown language 'zz'"):
        select(s, 0.1, "core", langs=["aa", "zz"])
    with pytest.raises(ValueError, match="only applies to region 'monolingual'"):
        select(s, 0.1, "core", lang="aa")
    s["bb"]["model.layers.0.input_layernorm.weight"][2] = float("nan")
    with pytest.raises(ValueError, match="contain NaN"):
        select(s, 0.1, "core")
    assert set(REGION_KINDS) >= {"core", "core_bottom", "monolingual"}


def test_summary_rows_per_layer_and_module():
    r = select(make_scores(), 0.5, "core", meta={"model_id": "m"})
    rows = r.summary()
    assert [(row["layer"], row["module"]) for row in rows] == [
        (0, "self_attn.q_proj"),
        (0, "input_layernorm"),
        (1, "mlp.down_proj"),
    ]
    down = rows[2]
    assert down["numel"] == 110 and down["selected"] == 50 + 5
    assert down["fraction"] == pytest.approx(55 / 110)
    assert sum(row["selected"] for row in rows) == r.numel
    assert split_name("model.norm.weight") == (None, "model.norm")
    assert split_name("model.layers.12.mlp.experts.3.up_proj.weight") == (
        12,
        "mlp.experts.3.up_proj",
    )


def test_save_load_roundtrip_is_bit_exact(tmp_path):
    meta = {
        "model_id": "sandbox-s",
        "revision": "r1",
        "metric": "taylor",
        "data_fingerprint": "ab" * 32,
    }
    r = select(make_scores(), 0.37, "monolingual", lang="bb", meta=meta)
    path = r.save(tmp_path / "sub" / "region.safetensors")
    back = Region.load(path)
    assert list(back.masks) == list(r.masks)
    for name, mask in r.masks.items():
        assert back.masks[name].dtype == torch.bool and torch.equal(back.masks[name], mask)
    assert back.meta == r.meta
    for field in (
        "model_id",
        "revision",
        "metric",
        "region",
        "ratio",
        "languages",
        "data_fingerprint",
        "regionbench_version",
    ):
        assert field in back.meta
    # packed: about one bit per entry, not one byte
    assert path.stat().st_size < r.total // 8 + 2000
    assert not list(path.parent.glob(".*tmp"))
    empty = select(make_scores(), 0.0, "core")
    assert Region.load(empty.save(tmp_path / "empty.safetensors")).numel == 0


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not a regionbench region file"):
        Region.load(tmp_path / "w.safetensors")


def _rewrite(path, change) -> None:
    """Rewrite a mask file with `change(tensors, metadata)` applied: a damaged or forged file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def _saved(tmp_path, ratio=0.05):
    region = select(make_scores(), ratio, "core", meta={"model_id": "sandbox-s"})
    return region, region.save(tmp_path / "core.safetensors")


def _flip_zeros(tensors, metadata, name="model.layers.1.mlp.down_proj.weight"):
    """Garble the bits: all 100 entries of one 10x10 mask set instead of 5 (no padding bit)."""
    tensors[name] = torch.full_like(tensors[name], 255)
    tensors[name][-1] = 0xF0  # 100 = 12 bytes and 4 bits


def _error(path, **kw) -> str:
    with pytest.raises(ValueError) as err:
        Region.load(path, **kw)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_load_rejects_garbled_bits(tmp_path):
    region, path = _saved(tmp_path)
    assert region.masks["model.layers.1.mlp.down_proj.weight"].sum() == 5
    _rewrite(path, _flip_zeros)
    assert _error(path) == (
        f"region file {str(path)!r} is damaged: its masks do not match their sha256"
    )
    # without the checksum (a file edited with care) the counts still catch it
    _rewrite(path, lambda t, m: m.pop("sha256"))
    assert _error(path) == (
        f"region file {str(path)!r} is damaged: mask 'model.layers.1.mlp.down_proj.weight' "
        "selects 100 entries, its 'counts' metadata says 5"
    )


def test_load_rejects_wrong_shapes_metadata(tmp_path):
    import json

    def shapes(new):
        def change(tensors, metadata):
            metadata["shapes"] = json.dumps(json.loads(metadata["shapes"]) | new)
            metadata.pop("sha256")  # forged with care: only the sizes can tell

        return change

    name = "model.layers.0.self_attn.q_proj.weight"  # (7, 13): 91 bits in 12 bytes
    for new, needs in [([7, 14], 13), ([7, 12], 11), ([100], 13)]:
        _, path = _saved(tmp_path)
        _rewrite(path, shapes({name: new}))
        assert _error(path) == (
            f"region file {str(path)!r}: mask {name!r} has 12 packed bytes, its shape {new} "
            f"needs {needs} (wrong 'shapes' metadata or a damaged file)"
        )
    _, path = _saved(tmp_path)  # 90 bits fit the same 12 bytes: the padding bit tells
    _rewrite(path, lambda t, m: t.__setitem__(name, torch.full_like(t[name], 255)))
    _rewrite(path, shapes({name: [9, 10]}))
    assert _error(path) == (
        f"region file {str(path)!r} is damaged: mask {name!r} has bits beyond its shape"
    )
    _, path = _saved(tmp_path)  # same size, other layout: the checksum covers the shapes
    _rewrite(path, lambda t, m: m.__setitem__("shapes", m["shapes"].replace("[7, 13]", "[13, 7]")))
    assert "is damaged: its masks do not match their sha256" in _error(path)
    _, path = _saved(tmp_path)
    _rewrite(path, lambda t, m: m.__setitem__("shapes", "[1, 2]"))
    assert "has no valid metadata (not {name: [sizes]})" in _error(path)
    _, path = _saved(tmp_path)
    _rewrite(path, lambda t, m: t.pop(name))
    assert _error(path) == (
        f"region file {str(path)!r} is damaged: its 'shapes' metadata and its masks disagree "
        f"on {name!r}"
    )


def test_files_of_older_versions_still_load(tmp_path):
    """Files saved before counts and checksums existed load, with the size and padding checks."""
    region, path = _saved(tmp_path)
    _rewrite(path, lambda t, m: [m.pop("sha256"), m.pop("counts")])
    back = Region.load(path)
    assert all(torch.equal(back.masks[n], m) for n, m in region.masks.items())


def test_a_mask_file_for_another_model_is_refused_naming_the_parameter(tmp_path):
    from regionbench.interventions.kinds import intervene
    from regionbench.testing import tiny_llama

    model, other = tiny_llama(), tiny_llama(hidden=32, inter=64)
    params = {n: p for n, p in other.named_parameters() if ".layers." in n}
    region = select({"aa": {n: torch.rand(p.shape) for n, p in params.items()}}, 0.1, "core")
    region.meta["model_id"] = "tiny-32"
    path = region.save(tmp_path / "other.safetensors")
    first = next(iter(params))
    assert _error(path, model=model) == (
        f"region file {str(path)!r} (made for 'tiny-32') does not fit this model: {first!r} is "
        f"{list(params[first].shape)} in the file, "
        f"{list(model.get_parameter(first).shape)} in the model"
    )
    renamed = Region({"transformer.h.0.attn.c_attn.weight": torch.zeros(16, 48, dtype=torch.bool)})
    path = renamed.save(tmp_path / "gpt2.safetensors")
    assert _error(path, model=model) == (
        f"region file {str(path)!r} does not fit this model: it has no parameter "
        "'transformer.h.0.attn.c_attn.weight'"
    )
    # loaded without the model, the intervention still refuses it before changing anything
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loaded = Region.load(tmp_path / "other.safetensors")
    with (
        pytest.raises(ValueError, match=f"region mask for '{first}' has shape"),
        intervene(model, loaded, "remove"),
    ):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    own = select({"aa": {n: torch.rand(p.shape) for n, p in model.named_parameters()}}, 0.1)
    back = Region.load(own.save(tmp_path / "own.safetensors"), model=model)
    assert back.numel == own.numel


def test_an_edited_metadata_value_is_damage(tmp_path):
    """A mask file whose `ratio` (or model, metric, languages) was edited used to load silently:
    the file's metadata has a checksum of its own."""
    for key, value in [("ratio", "0.01"), ("model_id", "llama2-7b"), ("note", "added")]:
        _, path = _saved(tmp_path)
        _rewrite(path, lambda t, m, key=key, value=value: m.__setitem__(key, value))
        assert _error(path) == (
            f"region file {str(path)!r} is damaged: its metadata (model, metric, region, ratio, "
            "languages, ...) does not match its sha256: edited or corrupt; use the file the run "
            "saved, or make the region again"
        )


def test_files_of_format_v1_load_with_a_warning(tmp_path, caplog):
    """Files saved before the metadata had a checksum (format v1: the bits' sha256 only) still
    load, their bits checked, with one warning that an edit of their metadata cannot be told."""
    import hashlib
    import json

    region, path = _saved(tmp_path)

    def as_v1(tensors, metadata):
        metadata["format"] = "regionbench-region-v1"
        metadata.pop("meta_sha256")
        metadata["ratio"] = "0.5"  # cannot be told in a v1 file
        # v1's sha256, from its definition: the layout, then each packed mask by name
        layout = json.dumps(
            {"shapes": json.loads(metadata["shapes"]), "counts": json.loads(metadata["counts"])},
            sort_keys=True,
        )
        bits = hashlib.sha256()
        for name in sorted(tensors):
            t = tensors[name]
            bits.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
            bits.update(t.numpy().tobytes())
        metadata["sha256"] = hashlib.sha256(f"{layout}\n{bits.hexdigest()}".encode()).hexdigest()

    _rewrite(path, as_v1)
    with caplog.at_level("WARNING", logger="regionbench.regions.region"):
        back = Region.load(path)
    assert all(torch.equal(back.masks[n], m) for n, m in region.masks.items())
    assert back.meta["ratio"] == "0.5"
    assert [r.getMessage() for r in caplog.records] == [
        f"region file {str(path)!r} is of format regionbench-region-v1: its metadata (ratio, "
        "model, metric, ...) has no checksum, so an edit of it cannot be told; save the region "
        "again to give it one"
    ]
    _rewrite(path, _flip_zeros)  # its bits are still checked
    assert "is damaged: its masks do not match their sha256" in _error(path)
