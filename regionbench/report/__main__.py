"""`python -m regionbench.report`: tables from MLflow runs (see `regionbench.report.cli`)."""

from regionbench.report.cli import main

main()
