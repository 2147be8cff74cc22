"""The per-matrix language total S = Σ_ℓ score_ℓ that `core` and `core_bottom` rank (and the
kinds built on the core), computed once per (scores, languages) and cached, so that the jobs of a
ratio sweep read the per-language scores once between them instead of once each.

    totals, hit = cached_totals(scores, ["ar", "es"], scores_key, cache / "totals")
    region = select(scores, 0.01, "core", totals=totals)      # the same masks as without

S is summed in fp32 in the order of the languages (the order `select` always used: the masks are
bit-identical), and stored as a `ScoreCache` entry of one "language", `TOTAL`: content-addressed
by the scores' own cache key and the languages in order, written atomically, checked against its
sha256 on read, computed by one process under parallel demand (a cache this process cannot
write, filled before totals existed, gets them summed in memory instead). At 7B an entry is one language's
size (25.9 GB in fp32): a ratio after the first reads that instead of six languages' 155 GB.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from regionbench.common.cache import CacheError, ScoreCache, cache_key
from regionbench.regions.select import Summed

TOTAL = "Σ"  # the one "language" of a totals entry
SUM = "fp32, in language order"  # how S is formed: part of the key
log = logging.getLogger(__name__)


def totals_key(scores_key: str, langs: Sequence[str]) -> str:
    """The cache key of S over `langs` of the scores cached under `scores_key`."""
    return cache_key(what="language total", scores=scores_key, langs=list(langs), sum=SUM)


def cached_totals(
    scores: Mapping[str, Mapping[str, Tensor]],
    langs: Sequence[str],
    scores_key: str,
    root: str | Path,
) -> tuple[Mapping[str, Tensor], bool]:
    """({param: S} read lazily from the cache under `root`, hit): summed from `scores` (the
    entry of `scores_key`) and stored on a miss."""
    key = totals_key(scores_key, langs)
    meta = {"scores": scores_key, "langs": list(langs), "sum": SUM}

    def compute():
        summed = Summed(scores, langs)
        return [(TOTAL, {name: summed[name] for name in summed})]

    try:
        entry, hit = ScoreCache(root).get_or_compute(key, compute, meta=meta)
    except CacheError as err:  # a read-only cache filled without totals: sum as they are read
        log.warning("language totals not cached (%s): summed as they are read", err)
        return Summed(scores, langs), False
    log.info("language totals %s (%s)", "cache hit" if hit else "computed", key[:12])
    return entry[TOTAL], hit
