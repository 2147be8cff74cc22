"""Evaluation of a (possibly modified) in-memory model.

`perplexity.perplexity` — per-language token perplexity and bits-per-byte on held-out text;
`harness` — lm-evaluation-harness tasks on the same model object (`run_lm_eval`,
`flatten_results`, `check_tasks`) and our own lm-eval tasks (`write_tasks`: rb_ppl_<lang>,
sandbox_grammar_<lang>). Submodules are imported on use: torch and lm-eval load only when needed.
"""
