"""regionbench: find functional regions in language-model parameters, remove, perturb or freeze
them, and measure what each language loses.  See README.md; `python -m regionbench --help`."""

__version__ = "0.1.0"
