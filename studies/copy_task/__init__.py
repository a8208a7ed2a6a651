"""copy_task: run.py is the driver (python -m studies.copy_task); README.md is its page."""
