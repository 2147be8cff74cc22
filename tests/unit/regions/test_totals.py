"""Selection once per sweep: the language total S = Σ_ℓ score_ℓ is summed once and cached, every
ratio's top-k comes from it, the per-language scores are read once for three ratios (counted),
and the masks are exactly the top-k of S from the definition (and those of the old path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionbench.common import cache
from regionbench.common.cache import ScoreCache, cache_key
from regionbench.config import RunConfig
from regionbench.models.scope import scoped_params
from regionbench.regions.kinds import build, select, select_ratios
from regionbench.regions.select import per_matrix, topk_mask
from regionbench.regions.totals import cached_totals, totals_key
from regionbench.testing import tiny_llama

RATIOS = (0.01, 0.05, 0.2)
LANGS = ["aa", "bb", "cc"]


def _scores(params, seed=0, langs=LANGS):
    g = torch.Generator().manual_seed(seed)
    return {
        lang: {n: torch.rand(p.shape, generator=g) for n, p in params.items()} for lang in langs
    }


def _reference(scores, langs, name, ratio, largest=True):
    """Top (bottom) floor(ratio · numel) of S from the definition: numpy, fp32 sums in order."""
    s = np.zeros(scores[langs[0]][name].numel(), dtype=np.float32)
    for lang in langs:
        s = s + scores[lang][name].numpy().reshape(-1).astype(np.float32)
    k = round(ratio * 1000) * s.size // 1000  # floor, with ratio as the decimal written
    order = np.argsort(-s if largest else s, kind="stable")
    assert 0 < k < s.size and s[order[k - 1]] != s[order[k]]  # no tie at the threshold
    mask = np.zeros(s.size, dtype=bool)
    mask[order[:k]] = True
    return torch.from_numpy(mask).view(scores[langs[0]][name].shape)


def _old_core(per_lang, k, lang_index, name, largest=True):
    """The selection before totals: each ratio summed the languages itself."""
    total = per_lang[0].float().clone()
    for s in per_lang[1:]:
        total += s.float()
    return topk_mask(total, k, largest=largest, name=name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("region", ["core", "core_bottom"])
def test_select_ratios_are_the_topk_of_the_total(region, threads, monkeypatch):
    params = scoped_params(tiny_llama(hidden=32, inter=64))
    scores = _scores(params)
    was = torch.get_num_threads()
    torch.set_num_threads(threads)  # 2: matrices shared among worker threads
    try:
        regions = select_ratios(scores, RATIOS, region)
    finally:
        torch.set_num_threads(was)
    assert [r.meta["ratio"] for r in regions] == [repr(r) for r in RATIOS]
    for ratio, got in zip(RATIOS, regions, strict=True):
        assert list(got.masks) == list(params)
        for name in params:
            want = _reference(scores, LANGS, name, ratio, largest=region == "core")
            assert torch.equal(got.masks[name], want), (ratio, name)
        assert got.meta == select(scores, ratio, region).meta


def test_ties_break_as_the_old_path_did():
    """Quantised scores (many ties at every threshold), an all-zero matrix: the masks from the
    cached total are bit-identical to the old per-ratio summation."""
    params = scoped_params(tiny_llama())
    g = torch.Generator().manual_seed(3)
    scores = {
        lang: {n: torch.randint(0, 4, p.shape, generator=g).float() for n, p in params.items()}
        for lang in LANGS
    }
    zero = next(iter(params))
    for lang in LANGS:
        scores[lang][zero] = torch.zeros_like(scores[lang][zero])
    for region, largest in (("core", True), ("core_bottom", False)):
        new = select_ratios(scores, RATIOS, region)
        for ratio, got in zip(RATIOS, new, strict=True):
            pick = lambda p, k, i, n, largest=largest: _old_core(p, k, i, n, largest)  # noqa: E731
            old = per_matrix(scores, ratio, LANGS, pick)
            assert all(torch.equal(got.masks[n], old[n]) for n in params)


@pytest.fixture
def reads(monkeypatch):
    """{(file, param): times read} for every tensor read from a cache entry."""
    counted: dict[tuple[str, str], int] = {}
    original = cache.LazyTensors.__getitem__

    def counting(self, name):
        counted[(str(self.path), name)] = counted.get((str(self.path), name), 0) + 1
        return original(self, name)

    monkeypatch.setattr(cache.LazyTensors, "__getitem__", counting)
    return counted


def _entry(tmp_path, params):
    key = cache_key(test="totals", seed=0)
    ScoreCache(tmp_path / "importance").put(key, _scores(params))
    return key, ScoreCache(tmp_path / "importance").get(key)


def test_three_ratios_read_the_scores_once(tmp_path, reads):
    """A job's region of each ratio from the cached total: every language's score of every
    matrix is read once for the three ratios, S once per ratio; the masks are the definition's."""
    model = tiny_llama()
    params = scoped_params(model)
    key, scores = _entry(tmp_path, params)
    root, hits = tmp_path / "totals", []

    def totals():
        found, hit = cached_totals(scores, LANGS, key, root)
        hits.append(hit)
        return found

    regions = {}
    for ratio in RATIOS:
        run = RunConfig.from_cfg({"ratio": ratio})
        regions[ratio] = build(run, scores, LANGS, model, ("s", "w"), totals=totals)
    assert hits == [False, True, True]
    score_files = {str(scores[lang].path) for lang in LANGS}
    assert len(score_files) == len(LANGS)
    of_scores = {k: n for k, n in reads.items() if k[0] in score_files}
    assert of_scores == {(str(scores[lang].path), p): 1 for lang in LANGS for p in params}
    of_totals = {k: n for k, n in reads.items() if k[0] not in score_files}
    assert sorted(set(of_totals.values())) == [len(RATIOS)] and len(of_totals) == len(params)
    plain = {lang: {n: scores[lang][n] for n in params} for lang in LANGS}
    for ratio, region in regions.items():
        assert region.meta["languages"] == ",".join(LANGS)
        for name in params:
            assert torch.equal(region.masks[name], _reference(plain, LANGS, name, ratio))


def test_without_totals_each_ratio_reads_every_score(tmp_path, reads):
    """The old path, counted the same way: the count above is the cache's doing."""
    model = tiny_llama()
    params = scoped_params(model)
    _, scores = _entry(tmp_path, params)
    for ratio in RATIOS:
        build(RunConfig.from_cfg({"ratio": ratio}), scores, LANGS, model, ("s", "w"))
    assert set(reads.values()) == {len(RATIOS)} and len(reads) == len(LANGS) * len(params)


def test_totals_entry_is_keyed_by_languages_in_order_and_checked(tmp_path, caplog):
    model = tiny_llama()
    params = scoped_params(model)
    key, scores = _entry(tmp_path, params)
    root = tmp_path / "totals"
    assert totals_key(key, LANGS) != totals_key(key, LANGS[::-1])  # fp32 sums: order matters
    assert totals_key(key, LANGS) != totals_key(key, LANGS[:2])
    first, hit = cached_totals(scores, LANGS[:2], key, root)
    assert not hit
    want = {n: scores["aa"][n].float() + scores["bb"][n].float() for n in params}
    assert all(torch.equal(first[n], want[n]) for n in params)
    # an edited entry is damage: named, removed and summed again
    path = first.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    again, hit = cached_totals(scores, LANGS[:2], key, root)
    assert not hit and "damaged" in caplog.text
    assert all(torch.equal(again[n], want[n]) for n in params)


def test_a_nan_in_a_language_is_named_before_anything_is_stored(tmp_path):
    model = tiny_llama()
    params = scoped_params(model)
    scores = _scores(params)
    name = list(params)[1]
    scores["bb"][name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"scores of 'bb' for '{name}' contain NaN"):
        cached_totals(scores, LANGS, cache_key(test="nan"), tmp_path / "totals")
    with pytest.raises(ValueError, match=rf"scores of 'bb' for '{name}' contain NaN"):
        select(scores, 0.05, "core")
    assert not any((tmp_path / "totals").glob("*/manifest.json"))


def test_a_cache_that_cannot_be_written_sums_in_memory(tmp_path, monkeypatch, caplog):
    """A read-only cache filled before totals existed: the job is not failed for want of an
    entry it can do without; S is summed as it is read, with the same masks."""
    model = tiny_llama()
    params = scoped_params(model)
    key, scores = _entry(tmp_path, params)

    def read_only(self, *args, **kwargs):
        raise cache.CacheError("cannot write the cache entry (Read-only file system)")

    monkeypatch.setattr(ScoreCache, "get_or_compute", read_only)
    totals, hit = cached_totals(scores, LANGS, key, tmp_path / "totals")
    assert not hit and "not cached" in caplog.text
    plain = {lang: {n: scores[lang][n] for n in params} for lang in LANGS}
    region = select(scores, 0.05, "core", totals=totals)
    for name in params:
        assert torch.equal(region.masks[name], _reference(plain, LANGS, name, 0.05))
