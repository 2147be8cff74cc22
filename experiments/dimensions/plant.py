"""Plant a super weight in sandbox-m and check that regionbench finds it (the sandbox has none).

    python experiments/dimensions/plant.py [--out DIR] [--scale 200]

sandbox-m has no massive activation (its largest per-dimension peak is 2.4x the layer median),
so the outlier-aware regions of `+experiment=dimensions` have nothing to work on there. This
script makes one the way Yu et al. describe them: in block 0, the MLP channel j that fires
hardest on the first token writes, through one down-projection weight W[d, j], a spike into a
quiet residual dimension d, `--scale` times the layer's median peak. It saves the planted model
as an ordinary Hugging Face folder, runs the detector on it, and prints what the detector found
and the command that runs the study on the planted model. A planted spike is not a learned one:
the model never came to depend on it, so removing it undoes the plant instead of breaking a
mechanism the model relies on, and the numbers say nothing about real models' super weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from regionbench.common.cache import cache_root, fingerprint_model
from regionbench.data.sources import load_texts
from regionbench.models.loading import load_model
from regionbench.regions.outliers import detect, massive_activations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(cache_root() / "planted" / "sandbox-m-super-weight"))
    ap.add_argument("--scale", type=float, default=200.0)
    ap.add_argument("--docs", type=int, default=16, help="eval documents per language")
    args = ap.parse_args()

    model, tok = load_model("sandbox-m", progress=False)
    texts = load_texts("sandbox", "eval", n_docs=args.docs)
    docs = [d for lang in sorted(texts) for d in texts[lang]]
    before = massive_activations(model, tok, docs)
    print(f"sandbox-m: massive dims {before.dims}, largest ratio {float(before.ratios.max()):.2f}")

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
    target = args.scale * float(before.max_abs[0].median())
    with torch.no_grad():
        mlp.down_proj.weight[d, j] = target / float(first[j])
    out = Path(args.out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    name = f"model.layers.0.mlp.down_proj.weight[{d}, {j}]"
    print(f"planted {name} = {mlp.down_proj.weight[d, j].item():.1f} in {out}")

    found = detect(model, tok, docs, fingerprint_model(model, full=True), cache_root())
    print(f"detector: massive dims {found['dims']}, ratio {found['max_ratio']:.0f}")
    for w in found["super_weights"]:
        print(
            f"  super weight {w['param']}{w['index']} (share of the spike {w['output_share']:.2f})"
        )
    print("the study on the planted model:")
    print(f"  python -m regionbench -m +experiment=dimensions model=hf model.name={out}")
    print(f"  python -m regionbench -m model=hf model.name={out} region=coordinates \\")
    print(f"      \"region.coordinates=['{name}']\" intervention=scale intervention.factor=0,1")


if __name__ == "__main__":
    main()
