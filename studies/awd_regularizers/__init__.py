"""awd_regularizers: run.py is the driver (python -m studies.awd_regularizers); README.md is its page."""
