"""Reports from MLflow runs: comparison tables, the sweep summary, figures and the UI view.

tables   tables from runs, the sweep summary, the UI view; `python -m regionbench.report`
sweep    conditions in words and the sweep's figures
plots    the figures themselves (matplotlib, never pyplot)
"""
