"""The sandbox's shared meaning: one semantic sampler every language renders, and the seeded
random streams everything in the sandbox world is drawn from (no torch).

Everything is a pure function of the parts a stream is named by: streams are seeded with strings
(Python's `random` hashes them with SHA-512, so no PYTHONHASHSEED dependence), one stream per
document, so `n_docs=100` is a prefix of `n_docs=200` and splits never share a stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from itertools import accumulate

# Bump when the "pretrain" text changes (it reseeds every stream): sandbox model folders include
# it, so a change here can never load a model trained on another world.
CORPUS_VERSION = 2
_NS = f"regionbench-sandbox-v{CORPUS_VERSION}"


def rng_for(*parts: object) -> random.Random:
    """The random stream named by `parts` (e.g. ("eval", seed, i), ("lexicon", lang))."""
    return random.Random("/".join([_NS, *map(str, parts)]))


# Noun classes keep sentences sensible: agents act, things are acted on, places locate.
N_AGENTS, N_THINGS, N_PLACES = 30, 40, 15
N_NOUNS = N_AGENTS + N_THINGS + N_PLACES
N_VERBS, N_ADJS, N_PREPS = 30, 20, 5
_P_PLURAL, _P_DEFINITE, _P_ADJ, _P_PP, _P_PAST = 0.3, 0.5, 0.3, 0.4, 0.5
_P_TOPIC_SUBJ, _P_TOPIC_OBJ, _P_AGENT_OBJ = 0.4, 0.3, 0.25


def _zipf(n: int, s: float = 1.0) -> list[float]:
    return list(accumulate(1.0 / (rank + 1) ** s for rank in range(n)))


_ZIPF = {n: _zipf(n) for n in {N_AGENTS, N_THINGS, N_PLACES, N_VERBS, N_ADJS, N_PREPS}}


def pick(rng: random.Random, n: int, offset: int = 0) -> int:
    return offset + rng.choices(range(n), cum_weights=_ZIPF[n])[0]


@dataclass(frozen=True)
class NounPhrase:
    noun: int  # 0..N_NOUNS-1: agents, then things, then places
    plural: bool
    definite: bool
    adj: int | None = None


@dataclass(frozen=True)
class Sentence:
    """One semantic draw; `render_sentence` writes it in any language."""

    subj: NounPhrase
    verb: int
    past: bool
    obj: NounPhrase
    prep: int | None = None
    place: NounPhrase | None = None


def _np(rng: random.Random, noun: int) -> NounPhrase:
    return NounPhrase(
        noun=noun,
        plural=rng.random() < _P_PLURAL,
        definite=rng.random() < _P_DEFINITE,
        adj=pick(rng, N_ADJS) if rng.random() < _P_ADJ else None,
    )


def draw_sentence(rng: random.Random, topic: tuple[int, int] | None = None) -> Sentence:
    """One sentence's meaning; `topic` (agent, thing) makes a document's sentences cohere."""
    subj = topic[0] if topic and rng.random() < _P_TOPIC_SUBJ else pick(rng, N_AGENTS)
    if topic and rng.random() < _P_TOPIC_OBJ:
        obj = topic[1]
    elif rng.random() < _P_AGENT_OBJ:
        obj = pick(rng, N_AGENTS)
    else:
        obj = pick(rng, N_THINGS, N_AGENTS)
    sent = Sentence(
        subj=_np(rng, subj),
        verb=pick(rng, N_VERBS),
        past=rng.random() < _P_PAST,
        obj=_np(rng, obj),
    )
    if rng.random() < _P_PP:
        sent = replace(
            sent,
            prep=pick(rng, N_PREPS),
            place=_np(rng, pick(rng, N_PLACES, N_AGENTS + N_THINGS)),
        )
    return sent


def draw_document(rng: random.Random) -> tuple[Sentence, ...]:
    """A paragraph: 3-6 sentences sharing a topic agent and thing."""
    topic = (pick(rng, N_AGENTS), pick(rng, N_THINGS, N_AGENTS))
    return tuple(draw_sentence(rng, topic) for _ in range(rng.randint(3, 6)))
