"""Every on-disk cache of regionbench, with one key rule and one atomic write.

    key = cache_key(model=..., weights=fingerprint_model(model), samples=fingerprint_samples(w))
    scores = ScoreCache(root / "importance").get(key)      # importance scores (safetensors)
    JsonCache(root / "baselines").put(key, {"ppl": ...})   # the unmodified model's evaluation
    publish_dir(root / "tasks" / key, write_folder)        # a folder built once (tasks, models)
    value, hit = JsonCache(root / "baselines").get_or_compute(key, evaluate)   # computed once

The key is the sha256 of a canonical JSON of *every* input the caller passes; the cache never
guesses identity from paths or names, and a float, a tuple or an object without a canonical form
can never collide with another value. Writers build an entry privately and `os.replace` it into
place (fsynced, under a file lock for folders), so readers see either nothing or a complete
entry; anything else is a miss, never an error. Only safetensors and JSON are read back: nothing
is unpickled. Work that parallel jobs share (importance scores, the unmodified model's
evaluation, outliers) goes through `get_or_compute`: the first job computes under a file lock,
the others wait for it and read the stored entry, on one machine or across a shared filesystem.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

FORMAT = "regionbench-scores-v1"  # the layout of a ScoreCache entry
_KEY = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger(__name__)
T = TypeVar("T")


def _canonical(value):
    """JSON-able form of a cache input; anything without an unambiguous form is an error."""
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        # repr is the shortest exact round-trip form; json would also write it, but NaN/inf
        # would become non-JSON tokens.
        return {"float": repr(value)}
    if isinstance(value, Path | torch.dtype | torch.device):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    raise TypeError(f"cache input of type {type(value).__name__} has no canonical form: {value!r}")


def canonical_json(inputs: Mapping) -> str:
    """The canonical JSON text of `inputs`: sorted keys, no whitespace, lists kept in order."""
    return json.dumps(_canonical(inputs), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(**inputs) -> str:
    """sha256 hex of the canonical JSON of every input (keyword order does not matter)."""
    text = canonical_json({"__format__": "regionbench-cache-v1", **inputs})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _checked(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"cache key {key!r} is not a sha256 hex digest from cache_key()")
    return key


def fingerprint_texts(texts: Mapping[str, list[str]]) -> str:
    """sha256 of the texts: language order is irrelevant, document order is not (it decides
    the windows)."""
    return hashlib.sha256(
        canonical_json({k: list(v) for k, v in texts.items()}).encode()
    ).hexdigest()


def fingerprint_samples(samples: Mapping[str, Tensor]) -> str:
    """sha256 of token windows {lang: [n, seq_len] int64}: what importance actually reads, so it
    stands for the text, the tokenizer, and the number and length of samples at once."""
    h = hashlib.sha256()
    for lang in sorted(samples):
        w = samples[lang].detach().to("cpu", torch.int64).contiguous()
        h.update(f"{lang}|{tuple(w.shape)}\n".encode())
        h.update(w.numpy().tobytes())
    return h.hexdigest()


def fingerprint_model(model: torch.nn.Module, *, full: bool = False, samples: int = 1024) -> str:
    """sha256 over every state-dict entry's name, shape and dtype, plus its values.

    `full=False` (default) hashes `samples` evenly strided values per tensor: it tells checkpoints,
    dtypes and architectures apart in milliseconds even for 7B models, but not two models that
    differ in a handful of weights. `full=True` hashes every byte (exact; reads the whole model,
    about a second per GB — fine for sandbox sizes, slow for 7B).
    """
    h = hashlib.sha256(b"full" if full else f"sample{samples}".encode())
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        flat = t.reshape(-1)
        if not full and flat.numel() > samples:
            flat = flat[:: flat.numel() // samples][:samples]
        flat = flat.contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class LazyTensors(Mapping[str, Tensor]):
    """Tensors of one safetensors file, read on access (selection streams one at a time)."""

    def __init__(self, path: Path, keys: list[str]):
        self.path, self._keys = Path(path), list(keys)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._keys:
            raise KeyError(name)
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"LazyTensors({str(self.path)!r}, {len(self)} tensors)"


class ScoreCache:
    """Score entries under `root`, addressed by `cache_key(...)`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    def get(self, key: str) -> dict[str, LazyTensors] | None:
        """{lang: lazy {param: Tensor}} for a complete entry, else None."""
        entry = self.path(key)
        try:
            manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT or manifest.get("key") != key:
                return None
            from safetensors import safe_open

            files: dict[str, LazyTensors] = {}
            for fname, info in manifest["files"].items():
                path = entry / fname
                if path.stat().st_size != info["bytes"]:
                    return None  # truncated or replaced file
                with safe_open(path, framework="pt") as f:
                    keys = list(f.keys())
                if sorted(keys) != sorted(info["tensors"]):
                    return None
                files[fname] = LazyTensors(path, info["tensors"])
            return {lang: files[fname] for lang, fname in manifest["languages"].items()}
        except Exception:
            # Every way an entry can be incomplete or damaged is a miss: the caller recomputes.
            return None

    def meta(self, key: str) -> dict | None:
        """The `meta` dict stored with a complete entry, else None."""
        if self.get(key) is None:
            return None
        return json.loads((self.path(key) / "manifest.json").read_text(encoding="utf-8"))["meta"]

    def put(
        self,
        key: str,
        scores: Mapping[str, Mapping[str, Tensor]] | Iterable[tuple[str, Mapping[str, Tensor]]],
        meta: dict | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Store `scores` atomically; a no-op if a complete entry for `key` already exists.

        `scores` is {lang: {param: score}}, or (lang, {param: score}) pairs (`iter_scores`):
        each language is written to disk as it comes and can be freed before the next one is
        computed, so memory holds one language whatever their number. `dtype` is the stored
        precision (bf16/fp16 halve the entry; readers upcast)."""
        from safetensors.torch import save_file

        shared_dicts = isinstance(scores, Mapping)  # ids are stable only while all are held
        if shared_dicts and not scores:
            raise ValueError("scores is empty: nothing to cache")
        items = scores.items() if shared_dicts else scores

        def write(tmp: Path) -> None:
            files, languages, written = {}, {}, {}
            for lang, tensors in items:
                # Languages that share one dict (magnitude, random) share one file.
                fname = written.get(id(tensors)) if shared_dicts else None
                if fname is None:
                    fname = f"scores_{len(files)}.safetensors"
                    path = tmp / fname
                    save_file(
                        {n: t.detach().to("cpu", dtype).contiguous() for n, t in tensors.items()},
                        str(path),
                    )
                    fsync(path)
                    written[id(tensors)] = fname
                    files[fname] = {"bytes": path.stat().st_size, "tensors": list(tensors)}
                languages[str(lang)] = fname
                del tensors  # the caller's generator may now free this language
            if not languages:
                raise ValueError("scores is empty: nothing to cache")
            manifest = {
                "format": FORMAT,
                "key": key,
                "languages": languages,
                "files": files,
                "dtype": str(dtype).removeprefix("torch."),
                "meta": json.loads(json.dumps(meta or {}, default=str)),
            }
            with atomic_file(tmp / "manifest.json") as mpath:  # written last
                mpath.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), "utf-8")

        publish_dir(self.path(key), write, ready=lambda _: self.get(key) is not None)

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Mapping | Iterable[tuple[str, Mapping[str, Tensor]]]],
        meta=None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Mapping, bool]:
        """(scores, hit): the entry, or `compute()` stored (streamed language by language when
        it gives pairs) and read back lazily; computed once under parallel demand."""

        def stored():
            self.put(key, compute(), meta, dtype)
            if (entry := self.get(key)) is None:
                raise OSError(f"importance scores stored at {self.path(key)} cannot be read back")
            return entry

        return get_or_compute(self.path(key), lambda: self.get(key), stored, lambda _: None)


class Partial:
    """A score computation in progress, kept under `folder` so that a job killed half-way resumes
    where it stopped: every finished language's scores, and the raw fp32 accumulators of the one
    being computed with the number of samples already folded in (`importance.checkpoint_every`).
    Files are written atomically; anything unreadable or made with another batch size is
    ignored (that language starts over). The folder is removed once the entry is stored."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, lang: str, kind: str) -> Path:
        return self.folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(lang))}.{kind}"

    def finished(self, lang: str) -> LazyTensors | None:
        """A finished language's scores (read lazily), else None."""
        path = self._path(lang, "done.safetensors")
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return LazyTensors(path, list(f.keys()))
        except Exception:
            return None

    def state(self, lang: str, batch_size: int) -> tuple[int, dict[str, Tensor]] | None:
        """(samples done, raw accumulators) of an interrupted language, else None."""
        try:
            info = json.loads(self._path(lang, "state.json").read_text(encoding="utf-8"))
            if info["batch_size"] != batch_size:
                return None
            from safetensors.torch import load_file

            accs = load_file(self._path(lang, "state.safetensors"))
            if sorted(accs) != sorted(info["tensors"]) or info["samples"] < 1:
                return None
            return int(info["samples"]), accs
        except Exception:
            return None

    def save(self, lang: str, samples: int, batch_size: int, accs: Mapping[str, Tensor]) -> None:
        """Checkpoint `accs` after `samples` samples (tensors first, then the JSON that names them:
        a kill in between leaves the previous checkpoint's JSON, which no longer matches)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        state = {n: t.detach().to("cpu").contiguous() for n, t in accs.items()}
        self._path(lang, "state.json").unlink(missing_ok=True)
        with atomic_file(self._path(lang, "state.safetensors")) as tmp:
            save_file(state, str(tmp))
        info = {"samples": samples, "batch_size": batch_size, "tensors": sorted(state)}
        with atomic_file(self._path(lang, "state.json")) as tmp:
            tmp.write_text(json.dumps(info), encoding="utf-8")

    def finish(self, lang: str, scores: Mapping[str, Tensor]) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self._path(lang, "done.safetensors")) as tmp:
            save_file({n: t.detach().to("cpu").contiguous() for n, t in scores.items()}, str(tmp))
        for kind in ("state.json", "state.safetensors"):
            self._path(lang, kind).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class JsonCache:
    """Small JSON results (the unmodified model's evaluation) under `root`, by `cache_key`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{_checked(key)}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, or damaged: recompute

    def put(self, key: str, value: dict) -> None:
        with atomic_file(self.path(key)) as tmp:
            tmp.write_text(json.dumps(value), encoding="utf-8")

    def get_or_compute(self, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(value, hit): the entry, or `compute()` stored, computed once under parallel demand."""
        return get_or_compute(
            self.path(key), lambda: self.get(key), compute, lambda v: self.put(key, v)
        )


# --- atomic writes ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a private temporary path beside `path`; once the block has written it, it is fsynced
    and renamed onto `path` (readers see the old file or the new one, never half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def held(lock_path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the file lock `lock_path` (an OS lock: released when the holder dies, on one machine
    and on a shared filesystem). A second process waits, and says what it waits for."""
    from filelock import FileLock, Timeout

    Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is computing %s; waiting for it", what)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def get_or_compute(
    entry: Path, get: Callable[[], T | None], compute: Callable[[], T], put: Callable[[T], None]
) -> tuple[T, bool]:
    """(value, hit): the stored entry, or computed by exactly one of the processes that need it
    at once. The others wait on `<entry>.compute.lock` and then read what it stored."""
    value = get()
    if value is not None:
        return value, True
    with held(f"{entry}.compute.lock", f"{entry.parent.name}/{entry.stem[:12]}"):
        value = get()  # stored by the process we waited for
        if value is not None:
            return value, True
        value = compute()
        put(value)
    return value, False


def publish_dir(
    final: str | os.PathLike,
    build: Callable[[Path], None],
    *,
    ready: Callable[[Path], bool],
    force: bool = False,
) -> Path:
    """Build the folder `final` once: `build(tmp)` fills a private folder beside it, which is
    renamed into place under a file lock (`<final>.lock`). A concurrent builder waits for the lock
    and then finds `ready(final)` true; leftovers of a killed build are removed; `force` (or a
    damaged folder) replaces an existing one atomically."""
    final = Path(final)
    if ready(final) and not force:
        return final
    with held(f"{final}.lock", final.name):
        if ready(final) and not force:  # written by the process we waited for
            return final
        # Only the lock holder builds, so any temporary folder now is from a killed build.
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            build(tmp)
            if final.exists():  # forced, or damaged: swap it out atomically
                old = final.parent / f".{final.name}.tmp-old-{uuid.uuid4().hex}"
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def fsync(path: Path) -> None:
    """Flush a written file to disk: without it a power loss after the rename could leave a
    complete-looking entry of empty files."""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The regionbench cache: the argument, else $REGIONBENCH_CACHE, else ~/.cache/regionbench."""
    root = cache_dir or os.environ.get("REGIONBENCH_CACHE") or "~/.cache/regionbench"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
