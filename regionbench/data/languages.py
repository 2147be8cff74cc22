"""Language codes of the paper's real setting: its importance and perplexity languages (ISO
639-1) and their FLORES codes, which hub corpora and lm-eval task families are named by."""

from __future__ import annotations

_EVAL = "ar zh cs da nl en fi fr de el hu id it ja ko ms ml no fa pl pt ro ru es sw sv ta tr uk vi"
# FLORES+ names languages by ISO 639-3 + script; note Mandarin is cmn_Hans (not zho_Hans).
_FLORES = (
    "arb_Arab cmn_Hans ces_Latn dan_Latn nld_Latn eng_Latn fin_Latn fra_Latn deu_Latn ell_Grek "
    "hun_Latn ind_Latn ita_Latn jpn_Jpan kor_Hang zsm_Latn mal_Mlym nob_Latn pes_Arab pol_Latn "
    "por_Latn ron_Latn rus_Cyrl spa_Latn swh_Latn swe_Latn tam_Taml tur_Latn ukr_Cyrl vie_Latn"
)

PAPER_IMPORTANCE_LANGS = ("ar", "es", "ru", "zh", "ko", "vi")
PAPER_EVAL_LANGS = tuple(_EVAL.split())
FLORES_CODES = dict(zip(PAPER_EVAL_LANGS, _FLORES.split(), strict=True))
# Belebele (and other FLORES-200 task families) still call Mandarin zho_Hans.
FLORES200_CODES = FLORES_CODES | {"zh": "zho_Hans"}
