"""alternation_grid: run.py is the driver (python -m studies.alternation_grid); README.md is its page."""
