"""Ground truth: a language neuron planted in a tiny LLaMA — one FFN unit made to fire on every
token of one language's text and on no other's, and to carry that language's next-token signal —
is found at the top of the ranking (rank 1 of all 128 neurons) by LAPE, by mean activation and by
Taylor importance, each through the same `build` the pipeline calls.

Three languages write in disjoint "scripts" (token ranges) and share a space and a full stop. The
rest of the model is the random one, whose neurons fire on 10-80% of each language's tokens.
(LAPE admits only neurons with some language's firing probability above the 0.95 quantile of all
of them: a unit firing on its script's tokens alone, ~70% of its language's, is not a candidate
here.)"""

from __future__ import annotations

import pytest
import torch

from regionbench.config import RunConfig
from regionbench.importance import score_samples
from regionbench.regions.kinds import build, check
from regionbench.testing import tiny_llama

SCRIPTS = {"aa": range(5, 25), "bb": range(25, 45), "cc": range(45, 64)}
SHARED = (3, 4)  # a space and a full stop
TARGET, LAYER, UNIT = "bb", 0, 17  # the planted neuron
# Three residual dimensions the plant owns (nothing else reads or writes them): the token's
# script (+ on TARGET's, - on the others', 0 on shared tokens), the mean script of the context so
# far (written by head 0 of block LAYER), and the neuron's output (read by lm_head alone).
SCRIPT, CONTEXT, OUT = 5, 6, 7
DOWN, HEAD = 0.1, 4.0


def _text(lang: str, gen: torch.Generator) -> torch.Tensor:
    """[8, 32] windows: words of 1-4 script tokens separated by shared tokens."""
    script = torch.tensor(list(SCRIPTS[lang]))
    rows = []
    for _ in range(8):
        row = []
        while len(row) < 32:
            n = int(torch.randint(1, 5, (1,), generator=gen))
            row += script[torch.randint(len(script), (n,), generator=gen)].tolist()
            row.append(SHARED[int(torch.rand(1, generator=gen) < 0.2)])
        rows.append(row[:32])
    return torch.tensor(rows)


def _plant(model) -> None:
    """Neuron UNIT of block LAYER fires on every token of TARGET's text and on no other's, and
    raises the logits of TARGET's script.

    LAPE's candidates are the neurons with some language's firing probability above the 0.95
    quantile of all of them, so a language neuron must fire on (nearly) every token of its
    language, shared tokens too, not only on its script: the neuron reads the context's mean
    script, which head 0 of the block computes (q = 0: uniform causal attention; v reads the
    token's script). Each signal has a residual dimension of its own and sits at the stream's
    scale (σ of the embeddings), so that no other neuron becomes language-specific through it:
    the rest of the model is the untouched random one, whose neurons fire on 10-80% of every
    language's tokens."""
    cfg = model.config
    script = torch.zeros(cfg.vocab_size)
    script[list(SCRIPTS[TARGET])] = 1.0
    for lang, ids in SCRIPTS.items():
        if lang != TARGET:
            script[list(ids)] = -1.0
    hd = cfg.hidden_size // cfg.num_attention_heads
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        sigma = float(emb.std())
        for block in model.model.layers:
            att, mlp = block.self_attn, block.mlp
            for reader in (att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj):
                reader.weight[:, [SCRIPT, CONTEXT, OUT]] = 0
            for writer in (att.o_proj, mlp.down_proj):
                writer.weight[[SCRIPT, CONTEXT, OUT]] = 0
        emb[:, [SCRIPT, CONTEXT, OUT]] = 0
        emb[:, SCRIPT] = 2 * sigma * script
        head[:, [SCRIPT, CONTEXT, OUT]] = 0
        att, mlp = model.model.layers[LAYER].self_attn, model.model.layers[LAYER].mlp
        att.q_proj.weight[:hd] = 0
        att.v_proj.weight[0] = 0
        att.v_proj.weight[0, SCRIPT] = 1.0
        att.o_proj.weight[:, 0] = 0
        att.o_proj.weight[CONTEXT, 0] = 2 * sigma
        mlp.gate_proj.weight[UNIT] = 0
        mlp.up_proj.weight[UNIT] = 0
        mlp.gate_proj.weight[UNIT, CONTEXT] = 1.0
        mlp.up_proj.weight[UNIT, CONTEXT] = 1.0
        mlp.down_proj.weight[:, UNIT] = 0
        mlp.down_proj.weight[OUT, UNIT] = DOWN * sigma
        head[script > 0, OUT] = HEAD


@pytest.fixture(scope="module")
def planted():
    model = tiny_llama(hidden=32, inter=64, layers=2)
    _plant(model)
    gen = torch.Generator().manual_seed(0)
    return model, {lang: _text(lang, gen) for lang in SCRIPTS}


@pytest.mark.parametrize(
    ("metric", "pick"), [("lape", "specific"), ("activation", "core"), ("taylor", "core")]
)
def test_the_planted_neuron_is_ranked_first(planted, metric, pick):
    model, samples = planted
    langs = list(samples)
    scores = score_samples(model, samples, metric, batch_size=4, progress=False)
    # 1% of the 2 × 64 neurons over both blocks: the single top-ranked one
    region = {"name": "neurons", "pick": pick, "per_layer": False}
    run = RunConfig.from_cfg({"ratio": 0.01, "metric": {"name": metric}, "region": region})
    check(run, langs)
    chosen = build(run, scores, langs, model, ("s", "w"))
    down = {
        b: chosen.masks[f"model.layers.{b}.mlp.down_proj.weight"].all(dim=0).nonzero().reshape(-1)
        for b in (0, 1)
    }
    assert {b: d.tolist() for b, d in down.items()} == {LAYER: [UNIT], 1 - LAYER: []}
    if metric == "lape":  # it fires on the target language's script tokens only
        p = {lg: float(scores[lg][f"model.layers.{LAYER}:neuron"][UNIT]) for lg in langs}
        assert p[TARGET] == 1 and all(v == 0 for lg, v in p.items() if lg != TARGET)
        for lang in langs:  # and LAPE assigns it to the target language alone
            run.region.lang = lang
            if lang == TARGET:
                mine = build(run, scores, langs, model, ("s", "w")).masks
                assert mine.keys() == chosen.masks.keys()
                assert all(torch.equal(mine[n], chosen.masks[n]) for n in mine)
                continue
            with pytest.raises(ValueError, match=f"is empty: no neuron .* belongs to {lang}"):
                build(run, scores, langs, model, ("s", "w"))


def test_a_unit_region_too_small_for_one_unit_says_so(planted):
    model, samples = planted
    langs = list(samples)
    scores = score_samples(model, samples, "activation", batch_size=4, progress=False)
    for per_layer, where in ((False, "128 in all"), (True, "the largest block has 64")):
        region = {"name": "neurons", "per_layer": per_layer}
        run = RunConfig.from_cfg(
            {"ratio": 0.005, "metric": {"name": "activation"}, "region": region}
        )
        with pytest.raises(ValueError, match=rf"is empty: ⌊ratio·neurons⌋ is 0 \({where}\)"):
            build(run, scores, langs, model, ("s", "w"))
