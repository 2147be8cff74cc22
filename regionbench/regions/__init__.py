"""Regions (`region=`): boolean masks over parameters, how they are chosen and compared.

select       per-matrix selection from importance scores, the `Region` and its mask files
totals       the language total S = Σ_ℓ score_ℓ, summed once per scores and cached
dimensions   residual-stream dimensions and coordinates; where a region lives
outliers     massive activations and super weights
overlap      how much two regions agree
"""
