"""snapshots: run.py is the driver (python -m studies.snapshots); README.md is its page."""
