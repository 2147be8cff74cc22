"""What one process keeps between the jobs of a sweep: the loaded model, the importance samples
last read, and the unmodified model's evaluations.

Hydra's basic launcher runs a sweep's jobs one after another in one process, so the model stays
loaded (each intervention is undone bit-exactly), and a ratio sweep reads and tokenizes its
importance text once. `pipeline.run_job` uses one process-wide session unless given another.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regionbench.common.cache import (
    CacheError,
    JsonCache,
    cache_key,
    cache_root,
    fingerprint_model,
    fingerprint_samples,
    fingerprint_tokenizer,
)
from regionbench.config import RunConfig
from regionbench.data.sources import iter_texts, reading, text_revision
from regionbench.importance import importance_samples, seq_len_for
from regionbench.models.loading import load_model
from regionbench.plan import Plan

log = logging.getLogger(__name__)

FULL_FINGERPRINT_BELOW = 100_000_000  # parameters: hash every byte of smaller models
SAMPLES_FORMAT = 1  # bump when `importance_samples` would cut other windows from the same text


@dataclass
class Loaded:
    """A model as a job sees it: the model, its tokenizer and the fingerprint of its weights."""

    model: Any
    tokenizer: Any
    fingerprint: str

    @property
    def context(self) -> int:
        """The model's context length, as lm-eval resolves it."""
        from regionbench.evaluation.perplexity import default_max_length

        return default_max_length(self.model, self.tokenizer)


class _Stale(Exception):
    """The importance text read for a miss is not the text its remembered fingerprint was of."""


@dataclass
class Session:
    loaded: Loaded | None = None
    baselines: dict[str, dict] = field(default_factory=dict)  # by baseline cache key
    _model_key: str | None = None
    _samples: tuple[str, dict, str] | None = None  # (what was read, windows, fingerprint)
    _tokenizer_fp: str | None = None

    def cache_dir(self, run: RunConfig) -> Path:
        return cache_root(run.paths.cache_dir)

    def load(self, run: RunConfig) -> Loaded:
        """The run's model, loaded once for every job that names the same one."""
        m = run.model
        key = json.dumps(
            [
                m.name,
                m.revision,
                m.dtype,
                str(m.device_map),
                run.device,
                m.trust_remote_code,
                run.paths.cache_dir,
            ]
        )
        if self._model_key != key or self.loaded is None:
            self.loaded, self._samples = None, None  # the samples were the old tokenizer's
            self._tokenizer_fp = None
            model, tok = load_model(
                m.name,
                dtype=m.dtype,
                device=run.device,
                revision=m.revision,
                trust_remote_code=m.trust_remote_code,
                device_map=m.device_map,
                cache_dir=run.paths.cache_dir,
            )
            full = sum(p.numel() for p in model.parameters()) < FULL_FINGERPRINT_BELOW
            self.loaded = Loaded(model, tok, fingerprint_model(model, full=full))
            self._model_key = key
        return self.loaded

    def _samples_what(self, run: RunConfig, langs: list[str]) -> str:
        """Every setting that decides the importance windows (with the tokenizer and the text)."""
        seq_len = seq_len_for(run, self.load(run).context)
        imp = run.importance
        return json.dumps(
            [run.data.source, langs, seq_len, imp.samples, reading(run.data)]
            + [imp.packing, imp.drop_long]
        )

    def _samples_index(self, run: RunConfig, langs: list[str]) -> tuple[JsonCache, str] | None:
        """Where the fingerprint of the run's importance windows is kept, keyed by what decides
        them without reading the text: the settings, the tokenizer and each language's text
        revision (`text_revision`); None where a source cannot name its text unread."""
        revisions = [
            text_revision(run.data.source, "importance", lang, reading(run.data)) for lang in langs
        ]
        if any(r is None for r in revisions):
            return None
        if self._tokenizer_fp is None:
            self._tokenizer_fp = fingerprint_tokenizer(self.load(run).tokenizer)
        key = cache_key(
            kind="importance-samples",
            format=SAMPLES_FORMAT,
            settings=self._samples_what(run, langs),
            text=revisions,
            tokenizer=self._tokenizer_fp,
        )
        return JsonCache(self.cache_dir(run) / "importance" / "samples"), key

    def importance_fingerprint(self, run: RunConfig, langs: list[str]) -> str | None:
        """The fingerprint of the run's importance windows without reading or tokenizing the
        text, when a job has tokenized the same text with the same settings before; else None."""
        what = self._samples_what(run, langs)
        if self._samples is not None and self._samples[0] == what:
            return self._samples[2]
        index = self._samples_index(run, langs)
        entry = index[0].get(index[1]) if index else None
        return entry["fingerprint"] if entry else None

    def importance_samples(self, run: RunConfig, langs: list[str]) -> tuple[dict, str]:
        """The same number of fixed-length token samples per importance language (equal weight;
        `importance.packing`) and their fingerprint, read and tokenized once for the jobs that
        share them; the fingerprint is kept in the cache for later processes
        (`importance_fingerprint`)."""
        loaded = self.load(run)
        seq_len = seq_len_for(run, loaded.context)
        imp = run.importance
        what = self._samples_what(run, langs)
        if self._samples is None or self._samples[0] != what:
            self._samples = None  # one text set at a time: 10k x 512 x 6 languages is 250 MB
            streams = {
                lang: iter_texts(run.data.source, "importance", lang, **reading(run.data))
                for lang in langs
            }
            samples = importance_samples(
                loaded.tokenizer,
                streams,
                seq_len,
                imp.samples,
                packing=imp.packing,
                drop_long=imp.drop_long,
            )
            log.info(
                "importance text: %d samples of %d tokens per language",
                *next(iter(samples.values())).shape,
            )
            self._samples = (what, samples, fingerprint_samples(samples))
            self._remember(run, langs, self._samples[2])
        return self._samples[1], self._samples[2]

    def _remember(self, run: RunConfig, langs: list[str], fp: str) -> None:
        index = self._samples_index(run, langs)
        if index is None:
            return
        store, key = index
        known = store.get(key)
        if known is not None and known["fingerprint"] != fp:
            log.warning(
                "the importance text of %s changed although its revision did not (%s): "
                "scores found by the old fingerprint are no longer used",
                run.data.source,
                ", ".join(langs),
            )
        if known is None or known["fingerprint"] != fp:
            try:
                store.put(key, {"fingerprint": fp})
            except CacheError as err:  # a read-only or full cache: later jobs tokenize again
                log.warning("the importance windows' fingerprint is not kept: %s", err)

    def scores(self, run: RunConfig, plan: Plan) -> tuple[dict, str, str, bool]:
        """(scores, samples fingerprint, cache key, cache hit) of the run's metric on the plan's
        importance languages: nothing to score at ratio 0 or for a region given by position; no
        text read for a language-independent metric."""
        from regionbench.importance import cached_scores

        if not plan.scores:
            return {}, "", "none (no ranking)" if run.ratio else "none (ratio=0)", True
        loaded = self.load(run)
        langs = list(plan.importance_langs)
        root = self.cache_dir(run) / "importance"
        if not plan.reads_text:
            scores, key, hit = cached_scores(
                run, loaded.model, {}, langs, ("", loaded.fingerprint), root
            )
            return scores, "", key, hit
        known = self.importance_fingerprint(run, langs)
        if known is not None:  # a hit needs no text: read it only to compute

            def text() -> dict:
                samples, fp = self.importance_samples(run, langs)
                if fp != known:  # the text changed under the same revision: key it anew
                    raise _Stale
                return samples

            try:
                fingerprints = (known, loaded.fingerprint)
                scores, key, hit = cached_scores(run, loaded.model, text, langs, fingerprints, root)
                return scores, known, key, hit
            except _Stale:
                pass
        samples, samples_fp = self.importance_samples(run, langs)
        fingerprints = (samples_fp, loaded.fingerprint)
        scores, key, hit = cached_scores(run, loaded.model, samples, langs, fingerprints, root)
        return scores, samples_fp, key, hit

    def totals(self, run: RunConfig, scores, scores_key: str, langs: list[str]):
        """{param: S = Σ_ℓ score_ℓ} over `langs` of the scores cached under `scores_key`, from
        the cache (summed and stored by the first job of a sweep that needs them)."""
        from regionbench.regions.totals import cached_totals

        return cached_totals(scores, langs, scores_key, self.cache_dir(run) / "totals")[0]

    def reference(self, run: RunConfig, plan: Plan) -> dict:
        """The text an activation intervention reads its reference values from (fix, steer):
        the importance samples of the plan's languages, the very windows importance scores."""
        return self.importance_samples(run, list(plan.importance_langs))[0]

    def outliers(self, run: RunConfig, plan: Plan) -> dict:
        """The model's massive-activation dimensions and super weights under `outliers.rule`,
        found on the first `outliers.docs` importance documents of every importance language
        (the text the regions are found on, not the text they are evaluated on; once per model,
        text and rule: the result is cached on disk)."""
        from regionbench.regions.outliers import Rule, detect

        loaded = self.load(run)
        docs = []
        for lang in sorted(plan.importance_langs):
            stream = iter_texts(run.data.source, "importance", lang, **reading(run.data))
            docs += list(itertools.islice(stream, run.outliers.docs))
        return detect(
            loaded.model,
            loaded.tokenizer,
            docs,
            loaded.fingerprint,
            self.cache_dir(run),
            Rule.of(run.outliers),
        )
