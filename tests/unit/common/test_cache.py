"""The on-disk score cache: keys, hits and misses, atomic and concurrent writes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from regionbench.common.cache import (
    ScoreCache,
    cache_key,
    canonical_json,
    fingerprint_model,
    fingerprint_texts,
)
from regionbench.testing import tiny_llama

BASE = dict(
    model_id="sandbox-s",
    revision="abc123",
    weights="f" * 64,
    metric="taylor",
    data="d" * 64,
    seq_len=128,
    batch_size=8,
    include=[r"layers\."],
    exclude=[],
    seed=0,
    regionbench_version="0.1.0",
    dtype="float32",
)
CHANGED = dict(
    model_id="sandbox-m",
    revision="abc124",
    weights="e" * 64,
    metric="magnitude",
    data="c" * 64,
    seq_len=256,
    batch_size=4,
    include=[r"layers\.", "lm_head"],
    exclude=["norm"],
    seed=1,
    regionbench_version="0.2.0",
    dtype="bfloat16",
)


def scores(langs=("aa", "bb"), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        lang: {
            "model.layers.0.w": torch.rand(5, 3, generator=g),
            "model.layers.0.n": torch.rand(7, generator=g),
        }
        for lang in langs
    }


def assert_same(got, want):
    assert set(got) == set(want)
    for lang in want:
        assert set(got[lang]) == set(want[lang])
        for name in want[lang]:
            assert torch.equal(got[lang][name], want[lang][name])


def test_key_is_sensitive_to_every_input_and_not_to_keyword_order():
    base = cache_key(**BASE)
    assert len(base) == 64 and base == cache_key(**dict(reversed(list(BASE.items()))))
    for field, value in CHANGED.items():
        assert cache_key(**{**BASE, field: value}) != base, field
    assert cache_key(**BASE, extra=None) != base  # a new input is a new key
    assert cache_key(**{**BASE, "seq_len": 128.0}) != base  # 128 vs 128.0 kept apart
    assert cache_key(**{**BASE, "include": (r"layers\.",)}) == base  # tuple == list
    with pytest.raises(TypeError, match="no canonical form"):
        cache_key(**BASE, model=object())


def test_canonical_json_is_stable():
    assert canonical_json({"b": 1, "a": [1, 2.5]}) == '{"a":[1,{"float":"2.5"}],"b":1}'


def test_put_get_roundtrip_miss_and_meta(tmp_path):
    cache = ScoreCache(tmp_path)
    key, s = cache_key(**BASE), scores()
    assert cache.get(key) is None and cache.meta(key) is None
    cache.put(key, s, meta={"model_id": "sandbox-s", "seconds": 1.5})
    got = cache.get(key)
    assert_same(got, s)
    assert cache.meta(key) == {"model_id": "sandbox-s", "seconds": 1.5}
    assert ScoreCache(tmp_path).get(cache_key(**{**BASE, "seed": 1})) is None
    assert sorted(p.name for p in (tmp_path / key).iterdir()) == [
        "manifest.json",
        "scores_0.safetensors",
        "scores_1.safetensors",
    ]
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="not a sha256"):
        cache.get("../etc")


def test_language_independent_scores_stored_once(tmp_path):
    shared = scores(langs=("x",))["x"]
    cache = ScoreCache(tmp_path)
    key = cache_key(**{**BASE, "metric": "magnitude"})
    cache.put(key, {"aa": shared, "bb": shared, "cc": shared})
    files = sorted(p.name for p in (tmp_path / key).glob("*.safetensors"))
    assert files == ["scores_0.safetensors"]
    got = cache.get(key)
    assert set(got) == {"aa", "bb", "cc"} and got["aa"] is got["cc"]
    assert_same(got, {"aa": shared, "bb": shared, "cc": shared})


def _damage(entry: Path, how: str) -> None:
    """Damage a stored entry the way a crash, a full disk or a hand edit would."""
    manifest = (entry / "manifest.json").read_bytes()
    data = (entry / "scores_1.safetensors").read_bytes()
    if how == "no manifest":  # crash before the manifest
        (entry / "manifest.json").unlink()
    elif how == "torn manifest":
        (entry / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    elif how == "truncated":
        (entry / "scores_1.safetensors").write_bytes(data[:-10])
    elif how == "zeroed":  # right size, bad header
        (entry / "scores_1.safetensors").write_bytes(b"\0" * len(data))
    elif how == "missing file":
        (entry / "scores_1.safetensors").unlink()
    elif how == "edited value":  # one score changed in place: same size, valid file
        from safetensors.torch import load_file, save_file

        tensors = load_file(entry / "scores_1.safetensors")
        tensors["model.layers.0.w"][2, 1] += 1.0
        save_file(tensors, str(entry / "scores_1.safetensors"))
        assert len((entry / "scores_1.safetensors").read_bytes()) == len(data)
    elif how == "nan":
        from safetensors.torch import load_file, save_file

        tensors = load_file(entry / "scores_1.safetensors")
        tensors["model.layers.0.n"][0] = float("nan")
        save_file(tensors, str(entry / "scores_1.safetensors"))
    elif how == "wrong shape":
        from safetensors.torch import load_file, save_file

        tensors = load_file(entry / "scores_1.safetensors")
        tensors["model.layers.0.w"] = tensors["model.layers.0.w"].reshape(3, 5)
        save_file(tensors, str(entry / "scores_1.safetensors"))
    elif how == "older format":  # an entry of regionbench before checksums
        info = json.loads(manifest)
        info["format"] = "regionbench-scores-v1"
        (entry / "manifest.json").write_text(json.dumps(info))
    else:
        raise AssertionError(how)


DAMAGES = [
    ("no manifest", "manifest.json is missing"),
    ("torn manifest", "JSONDecodeError"),
    ("truncated", "scores_1.safetensors has"),
    ("zeroed", "does not match its sha256"),
    ("missing file", "scores_1.safetensors is missing"),
    ("edited value", "scores_1.safetensors does not match its sha256: edited or corrupt"),
    ("nan", "does not match its sha256"),
    ("wrong shape", "does not match its sha256"),
    ("older format", "written by another regionbench version"),
]


@pytest.mark.parametrize(("how", "reason"), DAMAGES)
def test_damaged_entries_are_reported_removed_and_rewritten(tmp_path, how, reason, caplog):
    """Half-written, truncated, edited, NaN, reshaped or older entries are never used: one
    warning names the entry and why, the entry is removed, and the next put rewrites it."""
    cache = ScoreCache(tmp_path)
    key, s = cache_key(**BASE), scores()
    cache.put(key, s)
    entry = tmp_path / key
    _damage(entry, how)
    fresh_process()  # the edit comes from elsewhere, as if read by the next run
    with caplog.at_level("WARNING", logger="regionbench.common.cache"):
        assert cache.get(key) is None
    [record] = [r for r in caplog.records if r.name == "regionbench.common.cache"]
    message = record.getMessage()
    assert message.startswith(f"cache entry {entry} is damaged (") and reason in message
    assert message.endswith("): removed, recomputing it") and "\n" not in message
    assert not entry.exists()
    assert cache.get(key) is None and len(caplog.records) == 1  # gone: a plain miss now

    (tmp_path / f".{key}.tmp-deadbeef").mkdir()  # leftover of a crashed writer
    cache.put(key, s)  # repairs the entry
    assert_same(cache.get(key), s)
    assert not list(tmp_path.glob(".*tmp*"))


def fresh_process():
    """Forget which files this process has already checked (a new run starts with nothing)."""
    from regionbench.common import cache

    cache._VERIFIED.clear()


def test_a_damaged_entry_is_recomputed_once_and_never_used(tmp_path, caplog):
    cache = ScoreCache(tmp_path)
    key, s = cache_key(**BASE), scores()
    cache.put(key, s)
    _damage(tmp_path / key, "edited value")
    fresh_process()
    calls = []

    def compute():
        calls.append(1)
        return s

    with caplog.at_level("WARNING", logger="regionbench.common.cache"):
        got, hit = cache.get_or_compute(key, compute)
    assert not hit and calls == [1]
    assert_same(got, s)  # the recomputed scores, not the edited ones
    assert sum("is damaged" in r.getMessage() for r in caplog.records) == 1
    assert cache.get_or_compute(key, compute)[1] and calls == [1]


def test_nan_scores_are_refused_not_cached(tmp_path):
    s = scores()
    s["bb"]["model.layers.0.n"][3] = float("nan")
    key = cache_key(**BASE)
    with pytest.raises(ValueError, match=r"scores of 'bb' for 'model.layers.0.n' contain NaN"):
        ScoreCache(tmp_path).put(key, s)
    assert not (tmp_path / key).exists() and not list(tmp_path.glob(".*tmp*"))


def test_checked_files_are_not_hashed_again_in_one_process(tmp_path, monkeypatch):
    """A sweep reads one entry per job: each file is hashed once per process and version; an
    edit (a new version) is hashed again and caught."""
    import time

    from regionbench.common import cache as cache_module

    cache = ScoreCache(tmp_path)
    key = cache_key(**BASE)
    cache.put(key, scores())
    # Files count as settled 50 ms after their last change here, not 2 s (timestamps on this
    # filesystem are far finer than 50 ms).
    monkeypatch.setattr(cache_module, "SETTLED_S", 0.05)
    time.sleep(0.1)
    fresh_process()
    hashed = []
    digest = cache_module.hashlib.file_digest
    monkeypatch.setattr(
        cache_module.hashlib,
        "file_digest",
        lambda f, algo: hashed.append(Path(f.name).name) or digest(f, algo),
    )
    for _ in range(3):
        assert cache.get(key) is not None
    assert sorted(hashed) == ["scores_0.safetensors", "scores_1.safetensors"]
    hashed.clear()
    time.sleep(0.1)  # an edit made later than the reads
    _damage(tmp_path / key, "edited value")
    assert cache.get(key) is None
    # the unchanged file is not read again; the edited one is read to find the damage, and once
    # more under the entry's lock before it is removed
    assert hashed == ["scores_1.safetensors", "scores_1.safetensors"]


def test_entries_are_immutable_first_writer_wins(tmp_path):
    cache = ScoreCache(tmp_path)
    key = cache_key(**BASE)
    cache.put(key, scores(seed=0))
    cache.put(key, scores(seed=1))
    assert_same(cache.get(key), scores(seed=0))


def test_concurrent_puts_leave_one_complete_entry(tmp_path):
    key, errors = cache_key(**BASE), []
    want = scores()

    def writer():
        try:
            ScoreCache(tmp_path).put(key, want, meta={"writer": threading.get_ident()})
            assert_same(ScoreCache(tmp_path).get(key), want)
        except Exception as e:  # surfaced below; a thread's exception would be lost
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert_same(ScoreCache(tmp_path).get(key), want)
    assert not list(tmp_path.glob(".*tmp*"))
    assert json.loads((tmp_path / key / "manifest.json").read_text())["key"] == key


def test_fingerprints():
    texts = {"aa": ["one", "two"], "bb": ["three"]}
    fp = fingerprint_texts(texts)
    assert fp == fingerprint_texts({"bb": ["three"], "aa": ["one", "two"]})
    assert fp != fingerprint_texts({"aa": ["two", "one"], "bb": ["three"]})
    assert fp != fingerprint_texts({"aa": ["one", "two"], "bb": ["three."]})
    assert fp != fingerprint_texts({"aa": ["one", "two"], "cc": ["three"]})

    model = tiny_llama()
    for full in (False, True):
        fp_m = fingerprint_model(model, full=full)
        assert fp_m == fingerprint_model(tiny_llama(), full=full)
        assert fp_m != fingerprint_model(tiny_llama(seed=1), full=full)
        assert fp_m != fingerprint_model(tiny_llama().to(torch.bfloat16), full=full)
    full = fingerprint_model(model, full=True)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] += 1.0
    assert fingerprint_model(model, full=True) != full


def test_lazy_mapping_reads_from_disk(tmp_path: Path):
    cache = ScoreCache(tmp_path)
    key = cache_key(**BASE)
    cache.put(key, scores())
    got = cache.get(key)
    assert len(got["aa"]) == 2 and "model.layers.0.w" in got["aa"]
    with pytest.raises(KeyError):
        got["aa"]["missing"]


def test_selection_streams_from_a_lazy_entry(tmp_path):
    from regionbench.regions.kinds import select

    cache, key, s = ScoreCache(tmp_path), cache_key(**BASE), scores()
    cache.put(key, s)
    for region, lang in [("core", None), ("monolingual", "bb")]:
        a, b = select(s, 0.4, region, lang=lang), select(cache.get(key), 0.4, region, lang=lang)
        assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks) and a.numel > 0


def _needs_the_entry(root: str, key: str, log: str, kind: str, out) -> None:
    """One of several processes that need the same entry at once (run in a forked child)."""
    import os
    import time

    from regionbench.common.cache import JsonCache

    def compute():
        with open(log, "a") as f:  # one line per computation, from whichever process did it
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for every other process to find no entry and wait
        return scores() if kind == "scores" else {"ppl": {"latn": 4.9}}

    cache = ScoreCache(root) if kind == "scores" else JsonCache(root)
    value, hit = cache.get_or_compute(key, compute)
    if kind == "scores":
        value = {lang: {n: t.tolist() for n, t in v.items()} for lang, v in value.items()}
    out.put((hit, value))


@pytest.mark.parametrize("kind", ["scores", "json"])
def test_parallel_processes_compute_a_shared_entry_once(tmp_path, kind):
    """4 processes need the same importance scores (or baseline) at the same moment: exactly one
    computes and stores them; the other three wait and read the stored entry (hit)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    key, log, out = cache_key(**BASE), tmp_path / "computed.log", ctx.Queue()
    procs = [
        ctx.Process(target=_needs_the_entry, args=(str(tmp_path / "c"), key, str(log), kind, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1  # computed once
    assert sorted(hit for hit, _ in results) == [False, True, True, True]
    assert all(value == results[0][1] for _, value in results)


def test_languages_are_written_one_at_a_time_and_let_go(tmp_path):
    """Pairs from a generator (what `iter_scores` gives): language k is on disk before language
    k+1 is computed, and the cache keeps no reference to it, so memory holds one language."""
    import gc
    import weakref

    want = scores(langs=("aa", "bb", "cc", "dd"))
    key, entry = cache_key(**BASE), ScoreCache(tmp_path)
    seen: list[str] = []

    def languages():
        previous = None
        for k, lang in enumerate(want):
            if previous is not None:
                gc.collect()
                assert previous() is None, "the cache still holds the previous language"
            written = list(tmp_path.glob(".*tmp-*/scores_*.safetensors"))
            assert len(written) == k, (lang, written)  # every earlier language is on disk
            tensors = {n: t.clone() for n, t in want[lang].items()}
            previous = weakref.ref(tensors["model.layers.0.w"])
            seen.append(lang)
            yield lang, tensors
            del tensors

    entry.put(key, languages())
    assert seen == list(want)
    assert_same(entry.get(key), want)


def test_scores_can_be_stored_in_half_precision(tmp_path):
    want = scores()
    full, half = ScoreCache(tmp_path / "fp32"), ScoreCache(tmp_path / "bf16")
    key = cache_key(**BASE)
    full.put(key, want)
    half.put(key, want, dtype=torch.bfloat16)
    got = half.get(key)
    for lang in want:
        for name, t in want[lang].items():
            assert got[lang][name].dtype == torch.bfloat16
            assert torch.equal(got[lang][name], t.to(torch.bfloat16))
    size = {
        c: sum(p.stat().st_size for p in c.path(key).glob("*.safetensors")) for c in (full, half)
    }
    data = sum(t.numel() for d in want.values() for t in d.values())  # entries in all files
    assert size[full] - size[half] == 2 * data  # 4 bytes -> 2 bytes per score
    manifest = json.loads((half.path(key) / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16"


def test_an_empty_stream_is_refused_and_leaves_no_entry(tmp_path):
    key = cache_key(**BASE)
    with pytest.raises(ValueError, match="nothing to cache"):
        ScoreCache(tmp_path).put(key, iter([]))
    assert ScoreCache(tmp_path).get(key) is None
    assert not list(tmp_path.glob(".*tmp*"))


def test_json_entries_are_checked_on_read(tmp_path, caplog):
    """An edited baseline number, a torn file or an entry of an older version is never used."""
    from regionbench.common.cache import JsonCache

    cache, key = JsonCache(tmp_path), cache_key(**BASE)
    value = {"ppl": {"latn": {"ppl": 4.25, "bpb": 1.5}}, "lm_eval": {"acc": 0.75}}
    cache.put(key, value)
    assert cache.get(key) == value
    path = tmp_path / f"{key}.json"
    good = path.read_text()

    def edited(text):
        entry = json.loads(text)
        entry["value"]["ppl"]["latn"]["ppl"] = 8.5  # what made ppl_ratio 0.4986
        return json.dumps(entry)

    for damage, reason in [
        (edited, "its value does not match its sha256: edited or corrupt"),
        (lambda t: t[: len(t) // 2], "not JSON"),
        (
            lambda t: json.dumps(json.loads(t)["value"]),
            "not a regionbench-json-v1 entry: written by another regionbench version",
        ),
        (lambda t: t.replace(key, "0" * 64), f"it is the entry of key '{'0' * 64}'"),
    ]:
        path.write_text(damage(good))
        caplog.clear()
        with caplog.at_level("WARNING", logger="regionbench.common.cache"):
            assert cache.get(key) is None
        [record] = caplog.records
        message = record.getMessage()
        assert message.startswith(f"cache entry {path} is damaged ({reason}")
        assert message.endswith("): removed, recomputing it") and "\n" not in message
        assert not path.exists()
        path.write_text(good)
    path.write_text(edited(good))
    got, hit = cache.get_or_compute(key, lambda: value)
    assert not hit and got == value and cache.get(key) == value


def test_resume_checkpoints_are_checked_on_read(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from regionbench.common.cache import Partial

    partial, s = Partial(tmp_path / ".partial-x"), scores()
    partial.finish("aa", s["aa"])
    partial.save("bb", samples=6, batch_size=3, accs=s["bb"])
    assert_same({"aa": partial.finished("aa")}, {"aa": s["aa"]})
    samples, accs = partial.state("bb", batch_size=3)
    assert samples == 6 and all(torch.equal(accs[n], t) for n, t in s["bb"].items())
    assert partial.state("bb", batch_size=4) is None  # another batch size: ignored, kept
    assert (tmp_path / ".partial-x" / "bb.state.json").exists()

    done = tmp_path / ".partial-x" / "aa.done.safetensors"
    tensors = load_file(done)
    tensors["model.layers.0.w"][0, 0] += 1.0  # edited, its sha256 kept
    from safetensors import safe_open

    with safe_open(done, framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(done), metadata=metadata)
    state = tmp_path / ".partial-x" / "bb.state.safetensors"
    state.write_bytes(state.read_bytes()[:-4])  # truncated
    fresh_process()
    with caplog.at_level("WARNING", logger="regionbench.common.cache"):
        assert partial.finished("aa") is None
        assert partial.state("bb", batch_size=3) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"importance checkpoint {done} is damaged (its tensors do not match their sha256): "
        "removed, that language starts over",
        f"importance checkpoint {state} is damaged (state.safetensors does not match its "
        "sha256): removed, that language starts over",
    ]
    assert sorted(p.name for p in (tmp_path / ".partial-x").iterdir()) == []


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_files_get_the_modes_of_the_umask(tmp_path, mask):
    """A cache shared by a group works when the umask lets the group in (safetensors alone
    writes 0600): every file and folder the cache writes gets 0666/0777 minus the umask."""
    import os
    import stat

    from regionbench.common.cache import JsonCache, Partial, publish_dir
    from regionbench.regions.kinds import select

    old = os.umask(mask)
    try:
        key = cache_key(**BASE)
        ScoreCache(tmp_path / "importance").put(key, scores())
        ScoreCache(tmp_path / "importance").get_or_compute(cache_key(**{**BASE, "seed": 1}), scores)
        JsonCache(tmp_path / "baselines").get_or_compute(key, lambda: {"ppl": 1.0})
        partial = Partial(tmp_path / "importance" / ".partial-x")
        partial.finish("aa", scores()["aa"])
        partial.save("bb", 3, 3, scores()["bb"])

        def build(tmp):
            from safetensors.torch import save_file

            (tmp / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "model.safetensors"))

        publish_dir(tmp_path / "sandbox" / "m", build, ready=lambda p: p.exists())
        select(scores(), 0.2).save(tmp_path / "regions" / "core.safetensors")
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")
    }
    assert any(name.endswith(".safetensors") for name in modes) and len(modes) > 15
    want = {True: 0o777 & ~mask, False: 0o666 & ~mask}
    wrong = {n: oct(m) for n, m in modes.items() if m != want[(tmp_path / n).is_dir()]}
    assert not wrong


def test_a_cache_on_another_filesystem_than_tmpdir(tmp_path, monkeypatch):
    """Entries are staged beside their final place, never in $TMPDIR: on a tmpfs cache with
    TMPDIR on the disk every kind of entry is written on the first try."""
    import os
    import shutil
    import tempfile
    import uuid

    from regionbench.common.cache import JsonCache, Partial, publish_dir

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no tmpfs on another filesystem than the temporary folder")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = shm / f"regionbench-test-{uuid.uuid4().hex}"
    try:
        key = cache_key(**BASE)
        got, hit = ScoreCache(root / "importance").get_or_compute(key, scores)
        assert not hit and ScoreCache(root / "importance").get_or_compute(key, scores)[1]
        assert JsonCache(root / "baselines").get_or_compute(key, lambda: {"ppl": 2.0}) == (
            {"ppl": 2.0},
            False,
        )
        Partial(root / "importance" / ".partial-x").finish("aa", scores()["aa"])
        built = publish_dir(
            root / "sandbox" / "m",
            lambda tmp: (tmp / "config.json").write_text("{}"),
            ready=lambda p: (p / "config.json").is_file(),
        )
        assert (built / "config.json").read_text() == "{}"
        assert os.stat(built).st_dev == os.stat(shm).st_dev != os.stat(tmp_path).st_dev
        assert not list(tmp_path.iterdir())  # nothing was staged in TMPDIR
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_full_disk_names_the_entry_and_its_folder(tmp_path):
    """ENOSPC on a tmpfs that fills, while a baseline (JSON) and a score entry (safetensors,
    whose writer says "os error 28", not an OSError) are written: one line naming the entry, its
    folder and the fix, and nothing half-written left."""
    from conftest import tmpfs

    from regionbench.common.cache import CacheError, JsonCache

    root = tmp_path / "cache"
    with tmpfs(root, "128k"):
        key = cache_key(**BASE)
        big = {"values": list(range(50_000))}
        with pytest.raises(CacheError) as err:
            JsonCache(root / "baselines").put(key, big)
        entry = root / "baselines" / f"{key}.json"
        assert str(err.value).startswith(
            f"cannot write the cache entry {entry}: No space left on device ("
        )
        assert str(err.value).endswith(
            f"free space in {root / 'baselines'}, or point paths.cache_dir (REGIONBENCH_CACHE) "
            "at a filesystem with room"
        )
        assert "\n" not in str(err.value)
        tensors = {"aa": {"w": torch.rand(300, 300)}}  # 360 kB
        with pytest.raises(CacheError) as err:
            ScoreCache(root / "importance").put(key, tensors)
        entry = root / "importance" / key
        assert str(err.value).startswith(
            f"cannot write the cache entry {entry}: No space left on device ("
        )
        assert str(err.value).endswith(
            f"free space in {root / 'importance'}, or point paths.cache_dir (REGIONBENCH_CACHE) "
            "at a filesystem with room"
        )
        left = [p.name for p in root.rglob("*") if not p.name.endswith(".lock") and p.is_file()]
        assert left == []
        assert ScoreCache(root / "importance").get(key) is None


def _as_another_user(task) -> str:
    """What `task()` returns when run by the user nobody, in a fork of this process (the
    cache's files are root's; the fork needs no file of the Python installation, which nobody
    may not read here: what it uses is imported first)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root, to read the cache as another user")
    import pwd  # noqa: F401 - imported before the fork, see above
    import stat  # noqa: F401

    import filelock  # noqa: F401
    import safetensors  # noqa: F401

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            said = task()
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            said = f"the child failed: {type(err).__name__}: {err}"
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    out = b""
    while chunk := os.read(read, 1 << 16):
        out += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return out.decode()


def test_an_entry_another_user_cannot_read_is_a_permission_problem_not_damage(tmp_path):
    """Entries written 0600 by one user of a shared cache, read by another: one line that says
    it is the cache's modes, naming the entry and the owner; the entries are kept (they used to
    be called damaged, then a bare PermissionError on a .lock)."""
    import os
    import tempfile

    from regionbench.common.cache import CacheError, JsonCache

    root = Path(tempfile.mkdtemp(prefix="rb-shared-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        key = cache_key(**BASE)
        JsonCache(root / "baselines").put(key, {"ppl": 1.0})
        ScoreCache(root / "importance").put(key, scores())
        for path in root.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o600)  # as umask 077 writes them
        (root / "importance" / f"{key}.compute.lock").touch(0o644)
        before = sorted(str(p) for p in root.rglob("*"))

        def read() -> str:
            said = []
            for get in (
                lambda: JsonCache(root / "baselines").get(key),
                lambda: ScoreCache(root / "importance").get(key),
                lambda: ScoreCache(root / "importance").get_or_compute(key, dict),
            ):
                try:
                    said.append(f"got {get()!r}")
                except CacheError as err:
                    said.append(str(err))
            return "\n".join(said)

        said = _as_another_user(read)
        assert sorted(str(p) for p in root.rglob("*")) == before  # nothing removed
    finally:
        import shutil

        shutil.rmtree(root)
    json_entry, score_entry = root / "baselines" / f"{key}.json", root / "importance" / key
    fix = "and have every user of the cache write with umask 002"
    assert said.splitlines() == [
        f"cache entry {json_entry} is not readable by this user ({key}.json owned by root, mode "
        "0600): a permission problem of the shared cache, not damage (the entry is kept): give "
        f"the group read access (chmod -R g+rX {json_entry}) {fix}",
        f"cache entry {score_entry} is not readable by this user (manifest.json owned by root, "
        "mode 0600): a permission problem of the shared cache, not damage (the entry is kept): "
        f"give the group read access (chmod -R g+rX {score_entry}) {fix}",
        f"cache entry {score_entry} is not readable by this user (manifest.json owned by root, "
        "mode 0600): a permission problem of the shared cache, not damage (the entry is kept): "
        f"give the group read access (chmod -R g+rX {score_entry}) {fix}",
    ]


def test_another_users_lock_is_a_permission_problem(tmp_path):
    import os
    import tempfile

    from regionbench.common.cache import CacheError, held

    root = Path(tempfile.mkdtemp(prefix="rb-shared-", dir="/tmp"))
    try:
        os.chmod(root, 0o777)  # the folder is the group's; the lock file is root's, 0644
        lock = root / "entry.compute.lock"
        lock.touch(0o644)

        def take() -> str:
            try:
                with held(lock, "x"):
                    return "took it"
            except CacheError as err:
                return str(err)

        said = _as_another_user(take)
    finally:
        import shutil

        shutil.rmtree(root)
    assert said.splitlines() == [
        f"cannot take the lock {lock} (Permission denied: owned by root, mode 0644): a permission "
        "problem of the shared cache, not damage: give the group write access (chmod g+w "
        f"{lock}) and have every user of the cache write with umask 002"
    ]
