"""Every on-disk cache of regionbench, with one key rule, one atomic write and one checksum rule.

    key = cache_key(model=..., weights=fingerprint_model(model), samples=fingerprint_samples(w))
    scores = ScoreCache(root / "importance").get(key)      # importance scores (safetensors)
    JsonCache(root / "baselines").put(key, {"ppl": ...})   # the unmodified model's evaluation
    publish_dir(root / "sandbox" / name, build_folder)     # a folder built once (sandbox models)
    value, hit = JsonCache(root / "baselines").get_or_compute(key, evaluate)   # computed once

The key is the sha256 of a canonical JSON of *every* input the caller passes; the cache never
guesses identity from paths or names, and a float, a tuple or an object without a canonical form
can never collide with another value. Writers build an entry privately beside its final place
(the same filesystem, so the rename is atomic wherever the cache lives) and `os.replace` it into
place (fsynced, under a file lock for folders), so readers see either nothing or a complete entry.

Entries carry a sha256 of their contents, written after the data and checked on read (once per
file version and process: 0.07 s per 100 MB on a 2-core CPU, see README), so an edited score, an
edited baseline number or a truncated file is never used: it is logged as one warning naming
the path, removed, and recomputed. Only safetensors and JSON are read back: nothing is unpickled,
and no code is ever read from the cache. Files get the modes the umask gives (safetensors alone
would write 0600), so a cache can be shared by a group. Work that parallel jobs share (importance
scores, the unmodified model's evaluation, outliers) goes through `get_or_compute`: the first job
computes under a file lock, the others wait for it and read the stored entry, on one machine or
across a shared filesystem.

A cache this process cannot write (a shared, pre-filled one, read-only) serves the entries it
holds; the first entry a job would have to write is a `CacheError` naming it, as is a full disk
(naming the folder). An entry another user owns and this one cannot read is a permission problem
of the shared cache (modes, umask), never taken for damage: it is kept, and named.
"""

from __future__ import annotations

import contextlib
import enum
import errno
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

FORMAT = "regionbench-scores-v2"  # the layout of a ScoreCache entry (v2: with checksums)
JSON_FORMAT = "regionbench-json-v1"  # a JsonCache entry: the value and its checksum
_CHUNK = 8 << 20  # bytes read at a time when hashing a file
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


def fingerprint_tokenizer(tokenizer) -> str:
    """sha256 of what decides a tokenizer's ids: a fast tokenizer's whole definition (vocabulary,
    merges, normalizer, pre-tokenizer, the post-processor that adds BOS/EOS), else its
    vocabulary; plus its class, special tokens and BOS/EOS flags."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    extra = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "flags": [str(getattr(tokenizer, f, None)) for f in ("add_bos_token", "add_eos_token")],
    }
    return hashlib.sha256(canonical_json({"body": body, **extra}).encode()).hexdigest()


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


class Damaged(Exception):
    """A cache entry that is there but cannot be trusted; the message says why."""


class CacheError(ValueError):
    """A cache entry that cannot be written (a read-only cache, a full disk) or read (another
    user's, without read access): one line naming it, the cause and the fix."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_ACCESS = (errno.EACCES, errno.EPERM)
_READ_ONLY = (*_NO_ACCESS, errno.EROFS)


def _errno_of(err: BaseException) -> int | None:
    """The OS error number behind `err`: an OSError's, or the "(os error N)" that safetensors'
    errors end with."""
    if isinstance(err, OSError) and err.errno:
        return err.errno
    found = re.search(r"os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def writing(entry: str | os.PathLike, what: str = "cache entry") -> Iterator[None]:
    """Turn a full disk or a cache this process cannot write, met while `entry` is written, into
    a one-line `CacheError` naming the entry, its folder and the fix."""
    entry = Path(entry)
    try:
        yield
    except CacheError:
        raise
    except Exception as err:
        code = _errno_of(err)
        if code in _FULL:
            file = Path(getattr(err, "filename", None) or entry).name
            raise CacheError(
                f"cannot write the {what} {entry}: {os.strerror(code)} ({file}): free space in "
                f"{entry.parent}, or point paths.cache_dir (REGIONBENCH_CACHE) at a filesystem "
                "with room"
            ) from None
        if code in _READ_ONLY:
            raise CacheError(
                f"cannot write the {what} {entry} ({os.strerror(code)}): this process cannot "
                "write the cache; the entries it holds are used, this one is missing: make the "
                "cache writable (a group's cache: chmod -R g+w and umask 002), or point "
                "paths.cache_dir (REGIONBENCH_CACHE) at a writable folder"
            ) from None
        raise


def _owner(path: Path) -> str:
    """'owned by NAME, mode 0600' for the file at `path`, as far as it can be told."""
    import pwd
    import stat

    try:
        st = path.stat()
    except OSError:
        return "in a folder this user cannot enter"
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = f"uid {st.st_uid}"
    return f"owned by {user}, mode {stat.S_IMODE(st.st_mode):04o}"


def unreadable(path: str | os.PathLike, entry: str | os.PathLike | None = None) -> CacheError:
    """The error for a cache file this user may not read: a permission problem of the shared
    cache, not damage (the entry is kept)."""
    path = Path(path)
    entry = Path(entry or path)
    return CacheError(
        f"cache entry {entry} is not readable by this user ({path.name} {_owner(path)}): a "
        "permission problem of the shared cache, not damage (the entry is kept): give the group "
        f"read access (chmod -R g+rX {entry}) and have every user of the cache write with umask "
        "002"
    )


# --- checksums and modes ------------------------------------------------------------------------

# sha256 of files already read in this process, by (device, inode, size, mtime, ctime): a sweep
# reads one entry once, not once per job. Only files whose timestamps were older than SETTLED_S
# when hashing started are remembered, so a later edit always shows as a new version (ctime
# cannot be set back by the user, and it moves on with every write).
_VERIFIED: dict[tuple[int, int, int, int, int], str] = {}
SETTLED_S = 2.0


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in chunks (memory stays flat for a 27 GB file)."""
    import time

    before = os.stat(path)
    known = _VERIFIED.get(_identity(before))
    if known is not None:
        return known
    start = time.time_ns()
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    settled = max(before.st_mtime_ns, before.st_ctime_ns) < start - SETTLED_S * 1e9
    if settled and _identity(os.stat(path)) == _identity(before):
        _VERIFIED[_identity(before)] = digest
    return digest


def tensors_sha256(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of each tensor, in the order given."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _json_sha256(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS): the usual two calls
    os.umask(mask)
    return mask


def shareable(path: str | os.PathLike) -> None:
    """Give a file (or, recursively, a folder) the modes a new file gets from the umask:
    safetensors writes 0600, which would lock the rest of a group out of a shared cache."""
    path, mask = Path(path), umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _warn_damaged(path: Path, reason: str) -> None:
    log.warning("cache entry %s is damaged (%s): removed, recomputing it", path, reason)


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


def _shapes(path: Path) -> dict[str, list[int]]:
    """{name: shape} from a safetensors header (the data is not read)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {n: list(f.get_slice(n).get_shape()) for n in f.keys()}  # noqa: SIM118


class ScoreCache:
    """Score entries under `root`, addressed by `cache_key(...)`.

    An entry is a folder: one safetensors file per distinct score dict and a manifest written
    last, holding each file's size, sha256 and tensor shapes. `get` checks all of it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    def _read(self, key: str) -> dict[str, LazyTensors] | None:
        """The verified entry, None if there is none, `Damaged` if it cannot be trusted."""
        entry = self.path(key)
        if not entry.exists():
            return None
        try:
            manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                raise Damaged(
                    f"format {manifest.get('format')!r}, not {FORMAT!r}: written by another "
                    "regionbench version"
                )
            if manifest.get("key") != key:
                raise Damaged(f"its manifest is for key {manifest.get('key')!r}")
            files: dict[str, LazyTensors] = {}
            for fname, info in manifest["files"].items():
                path = entry / fname
                if fname != path.name or not fname.endswith(".safetensors"):
                    raise Damaged(f"its manifest names the file {fname!r}")
                if (size := path.stat().st_size) != info["bytes"]:
                    raise Damaged(f"{fname} has {size} bytes, not {info['bytes']}: truncated")
                if file_sha256(path) != info["sha256"]:
                    raise Damaged(f"{fname} does not match its sha256: edited or corrupt")
                if _shapes(path) != info["tensors"]:
                    raise Damaged(f"{fname} holds other tensors than its manifest lists")
                files[fname] = LazyTensors(path, list(info["tensors"]))
            return {str(lang): files[fname] for lang, fname in manifest["languages"].items()}
        except Damaged:
            raise
        except FileNotFoundError as err:
            raise Damaged(f"{Path(err.filename or '?').name} is missing") from None
        except Exception as err:  # noqa: BLE001 - every other way to be unreadable
            if _errno_of(err) in _NO_ACCESS:
                raise unreadable(getattr(err, "filename", None) or entry, entry) from None
            raise Damaged(f"{type(err).__name__}: {err}".splitlines()[0][:200]) from None

    def get(self, key: str) -> dict[str, LazyTensors] | None:
        """{lang: lazy {param: Tensor}} for a complete, verified entry, else None; a damaged
        entry is logged as one warning and removed (the caller recomputes it)."""
        try:
            return self._read(key)
        except Damaged as err:
            self._discard(key, str(err))
            return None

    def _complete(self, key: str) -> bool:
        try:
            return self._read(key) is not None
        except Damaged:
            return False

    def _discard(self, key: str, reason: str) -> None:
        entry = self.path(key)
        _warn_damaged(entry, reason)
        # Under publish_dir's lock, so a writer replacing the entry right now is not undone.
        with held(f"{entry}.lock", entry.name[:12]):
            if entry.exists() and not self._complete(key):
                old = entry.parent / f".{entry.name}.tmp-old-{uuid.uuid4().hex}"
                entry.rename(old)
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()

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
        precision (bf16/fp16 halve the entry; readers upcast). Scores with a NaN are refused:
        stored, they would fail every later selection."""
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
                    stored = {}
                    for n, t in tensors.items():
                        stored[n] = t.detach().to("cpu", dtype).contiguous()
                        if stored[n].is_floating_point() and torch.isnan(stored[n]).any():
                            raise ValueError(f"scores of {lang!r} for {n!r} contain NaN")
                    save_file(stored, str(path))
                    del stored
                    fsync(path)
                    written[id(tensors)] = fname
                    files[fname] = {
                        "bytes": path.stat().st_size,
                        "sha256": file_sha256(path),
                        "tensors": _shapes(path),
                    }
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

        publish_dir(self.path(key), write, ready=lambda _: self._complete(key))

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
    Files are written atomically, each with a sha256 of its tensors; a file that does not match
    it is logged, removed and that language starts over; one made with another batch size is
    ignored. The folder is removed once the entry is stored."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, lang: str, kind: str) -> Path:
        return self.folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(lang))}.{kind}"

    def _damaged(self, path: Path, reason: str) -> None:
        log.warning(
            "importance checkpoint %s is damaged (%s): removed, that language starts over",
            path,
            reason,
        )
        path.unlink(missing_ok=True)

    def finished(self, lang: str) -> LazyTensors | None:
        """A finished language's scores (read lazily, checked against their sha256), else None."""
        path = self._path(lang, "done.safetensors")
        if not path.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                want = (f.metadata() or {}).get("sha256")
                names = sorted(f.keys())
                got = tensors_sha256((n, f.get_tensor(n)) for n in names)
        except Exception as err:  # noqa: BLE001 - unreadable in any way
            self._damaged(path, f"{type(err).__name__}: {err}".splitlines()[0][:200])
            return None
        if got != want:
            self._damaged(path, "its tensors do not match their sha256")
            return None
        return LazyTensors(path, names)

    def state(self, lang: str, batch_size: int) -> tuple[int, dict[str, Tensor]] | None:
        """(samples done, raw accumulators) of an interrupted language, else None."""
        info_path, path = self._path(lang, "state.json"), self._path(lang, "state.safetensors")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # none (or killed between the two writes: the tensors alone are unused)
        try:
            if info["batch_size"] != batch_size:
                return None
            if file_sha256(path) != info["sha256"]:
                raise Damaged("state.safetensors does not match its sha256")
            from safetensors.torch import load_file

            accs = load_file(path)
            if sorted(accs) != sorted(info["tensors"]) or info["samples"] < 1:
                raise Damaged("its tensors or sample count do not match state.json")
            return int(info["samples"]), accs
        except Exception as err:  # noqa: BLE001 - unreadable in any way
            reason = str(err) if isinstance(err, Damaged) else f"{type(err).__name__}: {err}"
            self._damaged(path, reason.splitlines()[0][:200])
            info_path.unlink(missing_ok=True)
            return None

    def save(self, lang: str, samples: int, batch_size: int, accs: Mapping[str, Tensor]) -> None:
        """Checkpoint `accs` after `samples` samples (tensors first, then the JSON that names them
        and holds their sha256: a kill in between leaves no JSON, so nothing to resume from)."""
        from safetensors.torch import save_file

        with writing(self.folder, "importance checkpoint"):
            self.folder.mkdir(parents=True, exist_ok=True)
            state = {n: t.detach().to("cpu").contiguous() for n, t in accs.items()}
            self._path(lang, "state.json").unlink(missing_ok=True)
            with atomic_file(self._path(lang, "state.safetensors")) as tmp:
                save_file(state, str(tmp))
            info = {
                "samples": samples,
                "batch_size": batch_size,
                "tensors": sorted(state),
                "sha256": file_sha256(self._path(lang, "state.safetensors")),
            }
            with atomic_file(self._path(lang, "state.json")) as tmp:
                tmp.write_text(json.dumps(info), encoding="utf-8")

    def finish(self, lang: str, scores: Mapping[str, Tensor]) -> None:
        from safetensors.torch import save_file

        with writing(self.folder, "importance checkpoint"):
            self.folder.mkdir(parents=True, exist_ok=True)
            tensors = {n: t.detach().to("cpu").contiguous() for n, t in scores.items()}
            digest = tensors_sha256((n, tensors[n]) for n in sorted(tensors))
            with atomic_file(self._path(lang, "done.safetensors")) as tmp:
                save_file(tensors, str(tmp), metadata={"sha256": digest})
        for kind in ("state.json", "state.safetensors"):
            self._path(lang, kind).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class JsonCache:
    """Small JSON results (the unmodified model's evaluation) under `root`, by `cache_key`.

    An entry is {"format", "key", "sha256", "value"}: the sha256 of the value's canonical JSON is
    checked on read, so an edited number is never used."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{_checked(key)}.json"

    def _read(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in _NO_ACCESS:
                raise unreadable(path) from None
            raise Damaged(f"{type(err).__name__}: {err}") from None
        try:
            entry = json.loads(text)
        except ValueError as err:
            raise Damaged(f"not JSON: {err}") from None
        if not isinstance(entry, dict) or entry.get("format") != JSON_FORMAT:
            raise Damaged(f"not a {JSON_FORMAT} entry: written by another regionbench version")
        if entry.get("key") != key:
            raise Damaged(f"it is the entry of key {entry.get('key')!r}")
        value = entry.get("value")
        if not isinstance(value, dict) or _json_sha256(value) != entry.get("sha256"):
            raise Damaged("its value does not match its sha256: edited or corrupt")
        return value

    def get(self, key: str) -> dict | None:
        """The verified value, else None; a damaged entry is logged once and removed."""
        try:
            return self._read(key)
        except Damaged as err:
            _warn_damaged(self.path(key), str(err))
            self.path(key).unlink(missing_ok=True)
            return None

    def put(self, key: str, value: dict) -> None:
        entry = {"format": JSON_FORMAT, "key": key, "sha256": _json_sha256(value), "value": value}
        with writing(self.path(key)), atomic_file(self.path(key)) as tmp:
            tmp.write_text(json.dumps(entry), encoding="utf-8")

    def get_or_compute(self, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(value, hit): the entry, or `compute()` stored, computed once under parallel demand."""
        return get_or_compute(
            self.path(key), lambda: self.get(key), compute, lambda v: self.put(key, v)
        )


# --- atomic writes ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a private temporary path beside `path` (so on its filesystem); once the block has
    written it, it gets the umask's modes, is fsynced and renamed onto `path` (readers see the
    old file or the new one, never half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        shareable(tmp)
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
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("another process is computing %s; waiting for it", what)
            lock.acquire()
    except Timeout:
        raise
    except OSError as err:
        if err.errno not in _NO_ACCESS or not Path(lock_path).exists():
            raise
        raise CacheError(
            f"cannot take the lock {lock_path} ({os.strerror(err.errno)}: {_owner(Path(lock_path))}"
            "): a permission problem of the shared cache, not damage: give the group write "
            f"access (chmod g+w {lock_path}) and have every user of the cache write with umask 002"
        ) from None
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
    with contextlib.ExitStack() as stack:
        with writing(entry):  # a read-only cache: named before anything is computed
            stack.enter_context(
                held(f"{entry}.compute.lock", f"{entry.parent.name}/{entry.stem[:12]}")
            )
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
    """Build the folder `final` once: `build(tmp)` fills a private folder beside it (the same
    filesystem, so the rename below is atomic and cannot fail with EXDEV), which gets the umask's
    modes and is renamed into place under a file lock (`<final>.lock`). A concurrent builder
    waits for the lock and then finds `ready(final)` true; leftovers of a killed build are
    removed; `force` (or a damaged folder) replaces an existing one atomically."""
    final = Path(final)
    if ready(final) and not force:
        return final
    with writing(final), held(f"{final}.lock", final.name):
        if ready(final) and not force:  # written by the process we waited for
            return final
        # Only the lock holder builds, so any temporary folder now is from a killed build.
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            build(tmp)
            shareable(tmp)
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
    """The regionbench cache: the argument, else $REGIONBENCH_CACHE, else ~/.cache/regionbench;
    a folder that cannot be made or read is a one-line `ValueError` naming it. One this process
    cannot write is used as it is (a shared, pre-filled cache): its entries are served, and the
    first entry a job would have to write is named then (`writing`)."""
    root = cache_dir or os.environ.get("REGIONBENCH_CACHE") or "~/.cache/regionbench"
    path = Path(root).expanduser().resolve()
    where = "paths.cache_dir" if cache_dir else "the cache ($REGIONBENCH_CACHE)"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{where} {str(path)!r} is not a writable folder ({err.strerror or err}): "
            "point paths.cache_dir or REGIONBENCH_CACHE at one"
        ) from None
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(
            f"{where} {str(path)!r} is not a readable folder ({_owner(path)}): give this user "
            "read access (chmod g+rX) or point paths.cache_dir or REGIONBENCH_CACHE elsewhere"
        )
    return path
