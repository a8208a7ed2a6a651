"""paper_grid: run.py is the driver (python -m studies.paper_grid); README.md is its page."""
