"""`python -m regionbench.report`: tables from MLflow runs (see `regionbench.report.tables`)."""

from regionbench.report.tables import main

main()
