"""dni_stability: run.py is the driver (python -m studies.dni_stability); README.md is its page."""
