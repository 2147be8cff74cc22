"""Choosing components by short name, with the one-line "did you mean ...?" error users expect."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def check_choice(kind: str, value: object, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`, else raise a one-line ValueError naming it."""
    options = sorted(choices)
    if value in options:
        return value  # type: ignore[return-value]
    close = difflib.get_close_matches(str(value), options, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown {kind} {value!r}: {hint}choices: {', '.join(options)}")
