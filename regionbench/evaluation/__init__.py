"""Evaluation of a (possibly modified) in-memory model.

    perplexity   per-language token perplexity and bits-per-byte on held-out text
    harness      lm-evaluation-harness tasks on the same model object (`run_lm_eval`)
    catalog      lm-eval task names and datasets checked before any model work
    task_files   our own lm-eval tasks (rb_ppl_<lang>, sandbox_grammar_<lang>)
    stage        evaluation as a pipeline stage: tasks prepared, the cached baseline, metrics

Submodules are imported on use: torch and lm-eval load only when needed.
"""
