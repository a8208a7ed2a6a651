"""Each study's page, tables and CSV are what its report makes of its committed logs, byte for byte.

(The two grids are checked in tests/test_alternation_grid.py and tests/test_paper_grid.py, beside
their other tests.) Each report runs in a scratch folder whose ``logs`` is the study's own, so the
links it writes are the ones a rerun in place writes; its page (README.md, whose generated blocks
it rewrites) starts as a copy of the committed one."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studies.common import REPO

STUDIES = Path(REPO, "studies")
COPY_TASK_GRID = ["--windows", "2,3,4,5", "--lengths", "T,2T", "--arms", "bptt,dni,dni-cw-paper,dni-scan,ceiling",
                  "--updates", "10000"]   # the grid its page's "table" command names
DNI_STABILITY_ARMS = "real,synthetic,real-coordinatewise-gru,synthetic-coordinatewise-gru,synthetic-coordinatewise-lstm"

CASES = {  # study -> (report command after "python -m studies.NAME", files it writes, inputs beside the page)
    "copy_task": (["table", *COPY_TASK_GRID], ["README.md", "table.md", "results.csv"], ["control.tsv", "ablation.tsv"]),
    "dni_stability": (["--arms", DNI_STABILITY_ARMS, "--report-only"], ["README.md", "summary.md", "curves.csv"], []),
    "awd_regularizers": (["--report-only"], ["README.md", "regularizers.md", "regularizers.csv"], []),
}


@pytest.mark.parametrize("study", sorted(CASES))
def test_report_regenerates_the_committed_files(study, tmp_path):
    args, outputs, inputs = CASES[study]
    here = STUDIES / study
    os.symlink(here / "logs", tmp_path / "logs")
    for name in inputs + (["README.md"] if "README.md" in outputs else []):
        shutil.copy(here / name, tmp_path / name)
    logs = ["--logs", str(tmp_path / "logs")] if study == "copy_task" else []
    proc = subprocess.run([sys.executable, "-m", f"studies.{study}", *args, "--out", str(tmp_path), *logs], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in outputs:
        assert (tmp_path / name).read_bytes() == (here / name).read_bytes(), f"{here / name} is stale"
