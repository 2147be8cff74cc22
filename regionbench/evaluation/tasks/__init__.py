"""Templates of regionbench's own lm-eval tasks; `harness.write_tasks` copies them next to the
per-language YAML and data it writes (lm-eval reads the copies, never this folder)."""
