"""Reports from MLflow runs: comparison tables, the sweep summary, figures and the UI view.

tables        rows of runs, aggregated over seeds, paired with a baseline; markdown and CSV
summary       the sweep's summary on its parent run: tables, description, view, figures
view          the MLflow UI's saved runs-table view of a sweep, and its address
sweep         conditions in words and the sweep's figures
overlap       how much the sweep's regions agree (region_overlap.csv/.md/.png)
plots         drawing primitives and the sweep figures (matplotlib, never pyplot)
run_figures   the figures of one run: forgetting curve, region density, dimension profile
cli           `python -m regionbench.report`: tables in a terminal
"""
