"""Checkpoints of a sandbox pre-training, so an interrupted build resumes where it stopped.

    ckpt = Checkpoint(checkpoint_path(final), identity={...})   # beside the final cache folder
    state = ckpt.load()               # None, or the last saved step's tensors and JSON state
    ckpt.save(step, tensors, state)   # every N steps and on Ctrl-C / SIGTERM (at a step's end)
    ckpt.clear()                      # once the model folder is published (or on --force)

A checkpoint holds everything the next steps depend on: weights, AdamW moments and step
counts, the scheduler's state, the global RNG state and the losses so far (the data order is
replayed from the seed), so a resumed build gives the same bytes as one that was never
interrupted. It lives in `.<folder>.checkpoint`, a hidden sibling of the model folder that holds
no `model.safetensors` and no metadata file: it never looks like a complete model, and
`publish_dir` (which clears `.<folder>.tmp-*`) leaves it alone. The tensors go to safetensors
(never pickle) under a new name per step, then the JSON that names them and holds their sha256
replaces the last one atomically: a kill at any moment leaves the previous checkpoint usable.
One made by another torch/transformers version or CPU kernel family, or whose file does not
match its sha256, is logged, discarded, and the build starts over.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from regionbench.common.cache import atomic_file, file_sha256

log = logging.getLogger(__name__)

FORMAT = "regionbench-sandbox-checkpoint-v1"
STATE = "state.json"  # written last: names the tensor file and holds its sha256


def checkpoint_path(final: Path) -> Path:
    """The checkpoint folder of the model folder `final` (a hidden sibling, same filesystem)."""
    return final.parent / f".{final.name}.checkpoint"


class Checkpoint:
    """The last saved step of one build; `identity` is what must match for a resume to give
    the same bytes as an uninterrupted build (recipe, seed, library versions, CPU kernels)."""

    def __init__(self, folder: Path, identity: dict):
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from JSON

    def load(self) -> tuple[dict, dict] | None:
        """(tensors, state) of the last saved step, else None (no checkpoint, or one that cannot
        be trusted or used: logged, discarded)."""
        try:
            state = json.loads((self.folder / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            if self.folder.exists():  # a kill before the first JSON: only unusable tensors
                self.clear()
            return None
        except (OSError, ValueError) as err:
            return self.discard(f"{STATE} is unreadable: {err}")
        if state.get("format") != FORMAT:
            return self.discard(f"format {state.get('format')!r}, not {FORMAT!r}")
        if state.get("identity") != self.identity:
            theirs = state.get("identity") or {}
            changed = sorted(
                k for k in {*theirs, *self.identity} if theirs.get(k) != self.identity.get(k)
            )
            return self.discard(f"made with another {', '.join(changed)}")
        path = self.folder / str(state.get("tensors"))
        if path.parent != self.folder or not path.is_file():
            return self.discard(f"its tensor file {state.get('tensors')!r} is missing")
        if file_sha256(path) != state.get("sha256"):
            return self.discard(f"{path.name} does not match its sha256: edited or corrupt")
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except Exception as err:  # noqa: BLE001 - unreadable in any way
            return self.discard(f"{type(err).__name__}: {err}".splitlines()[0][:200])
        return tensors, state

    def save(self, step: int, tensors: dict, state: dict) -> None:
        """Save step `step`: the tensors under a new name, then the JSON naming them."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"state-{step:06d}.safetensors"
        with atomic_file(self.folder / name) as tmp:
            save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp))
        info = {
            **state,
            "format": FORMAT,
            "identity": self.identity,
            "step": step,
            "tensors": name,
            "sha256": file_sha256(self.folder / name),
        }
        with atomic_file(self.folder / STATE) as tmp:
            tmp.write_text(json.dumps(info), encoding="utf-8")
        for old in [*self.folder.glob("state-*.safetensors"), *self.folder.glob(".*.tmp")]:
            if old.name != name:  # earlier steps, and what a killed save left
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def discard(self, reason: str) -> None:
        """Log why the checkpoint is unusable and remove it; returns None (no state to resume)."""
        log.warning("sandbox checkpoint %s cannot be used (%s): starting over", self.folder, reason)
        self.clear()
        return None


class HeldSignals:
    """SIGINT and SIGTERM held until the end of the current training step, so the step's state
    can be checkpointed whole (`with HeldSignals() as held: ... if held.received: ...`);
    `deliver()` then hands the first signal to the handler that was there before (Ctrl-C's
    KeyboardInterrupt, regionbench's run-ending handler, or SIGTERM's default exit). A second
    signal is delivered at once. Off the main thread, where no handler can be set, nothing is
    held; a signal that is ignored (nohup, `&`) stays ignored."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict = {}

    def __enter__(self) -> HeldSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(sig)
                if current not in (signal.SIG_IGN, None):
                    self._previous[sig] = current
                    signal.signal(sig, self._hold)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _hold(self, signum: int, frame) -> None:
        self.received.append(signum)
        if len(self.received) > 1:  # asked twice: stop now, without a checkpoint of this step
            self.deliver()

    def _restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def deliver(self) -> None:
        """Give the first held signal to its previous handler; raises (KeyboardInterrupt, as a
        rule) or ends the process."""
        import signal

        signum = self.received[0]
        handler = self._previous.get(signum, signal.default_int_handler)
        self._restore()
        if callable(handler):
            handler(signum, None)
        else:  # SIG_DFL: end as if the signal had never been held
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        raise KeyboardInterrupt  # a handler that returned: the build stops all the same
