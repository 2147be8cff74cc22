"""Plant a super weight in sandbox-m and check that regionbench finds it (the sandbox has none).

    python experiments/dimensions/plant.py [--out DIR] [--rule sun|peak_median] [--scale 2]

sandbox-m has no massive activation, so the outlier-aware regions of `+experiment=dimensions`
have nothing to work on there (`region=outliers` is an error on it). This script makes one the
way Yu et al. describe them: in block 0, the MLP channel j that fires hardest on the first token
writes, through one down-projection weight W[d, j], a spike into a quiet residual dimension d of
`--scale` times the detector rule's threshold at block 0 on the importance text (the text the
detector reads): for `sun`, the larger of outliers.abs_min (100) and outliers.median_factor
(1000) x the largest per-document median |a| of block 0, so the spike is massive in every
document; for `peak_median`, outliers.factor (100) x block 0's median per-dimension peak (the
published planted model used this with --scale 2, on evaluation text). It saves the planted
model as an ordinary Hugging Face folder, runs the detector on it under both rules, and prints
what each found and the commands that run the study on the planted model. A planted spike is not
a learned one: the model never came to depend on it, so removing it undoes the plant instead of
breaking a mechanism the model relies on, and the numbers say nothing about real models' super
weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from regionbench.common.cache import cache_root, fingerprint_model
from regionbench.data.sources import load_texts
from regionbench.models.loading import load_model
from regionbench.regions.outliers import RULES, Rule, detect, massive_activations


def threshold(acts, rule: Rule) -> float:
    """The smallest |a| the rule calls massive at block 0 of these activations."""
    if rule.name == "sun":
        return max(rule.abs_min, rule.median_factor * float(acts.median[:, 0].max()))
    return rule.factor * float(acts.max_abs[0].median())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(cache_root() / "planted" / "sandbox-m-super-weight"))
    ap.add_argument("--rule", choices=sorted(RULES), default="sun")
    ap.add_argument("--scale", type=float, default=2.0, help="multiple of the rule's threshold")
    ap.add_argument("--docs", type=int, default=16, help="importance documents per language")
    args = ap.parse_args()

    model, tok = load_model("sandbox-m", progress=False)
    texts = load_texts("sandbox", "importance", n_docs=args.docs)
    docs = [d for lang in sorted(texts) for d in texts[lang]]
    rule = Rule(args.rule)
    before = massive_activations(model, tok, docs, rule)
    print(
        f"sandbox-m: massive dims {before.dims} ({rule.describe()}); largest |a| "
        f"{float(before.max_abs.max()):.3g}, largest |a| / its document's median "
        f"{before.max_entry_ratio:.3g}, largest peak / median peak "
        f"{float(before.peak_ratios.max()):.3g}"
    )

    mlp = model.model.layers[0].mlp
    acts = []
    hook = mlp.down_proj.register_forward_hook(lambda m, a, o: acts.append(a[0][0, 0].detach()))
    with torch.no_grad():
        for doc in docs[:8]:
            ids = [tok.bos_token_id, *tok(doc, add_special_tokens=False).input_ids]
            model(input_ids=torch.tensor([ids]))
    hook.remove()
    first = torch.stack(acts).mean(0)  # the MLP's inner activation at the first token
    j = int(first.abs().argmax())
    d = int(before.max_abs[0].argmin())  # the quietest residual dimension of block 0
    target = args.scale * threshold(before, rule)
    with torch.no_grad():
        mlp.down_proj.weight[d, j] = target / float(first[j])
    out = Path(args.out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    name = f"model.layers.0.mlp.down_proj.weight[{d}, {j}]"
    print(
        f"planted {name} = {mlp.down_proj.weight[d, j].item():.1f} (spike ~{target:.3g}) in {out}"
    )

    fingerprint = fingerprint_model(model, full=True)
    for each in (Rule("sun"), Rule("peak_median")):
        found = detect(model, tok, docs, fingerprint, cache_root(), each)
        print(f"detector, {each.describe()}: massive dims {found['dims']}")
        for w in found["super_weights"]:
            share = w["output_share"]
            print(f"  super weight {w['param']}{w['index']} (share of the spike {share:.2f})")
    print("the study on the planted model (outliers.rule=sun is the default):")
    print(f"  python -m regionbench -m +experiment=dimensions model=hf model.name={out} \\")
    print("      region=core,core_minus_outliers,outliers,top-dims,random-dims")
    print(f"  python -m regionbench -m model=hf model.name={out} region=coordinates \\")
    print(f"      \"region.coordinates=['{name}']\" intervention=scale intervention.factor=0,1")


if __name__ == "__main__":
    main()
