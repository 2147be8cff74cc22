"""regionbench's own lm-eval tasks: the templates and their Python side (`rb_tasks`). They stay
here, in the installed package: the per-language files of `task_files.write_tasks` include the
templates by absolute path, and lm-eval imports `rb_tasks` from here (no code in task folders)."""
