"""The MLP grid (studies/alternation_grid) on tiny data: every number it reports
is the one in the fairseq logs it wrote, and runs end at the bottom of a cosine cycle."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO
from studies import alternation_grid
from studies.alternation_grid import run as grid


def test_grid_reports_what_the_logs_say(tiny_data, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "studies.alternation_grid", "--corpus", "ptb",
           "--data-bin", str(tiny_data), "--out", str(out), "--work-dir", str(tmp_path / "work"),
           "--arms", "real-restarts,alternating",
           "--windows", "5", "--seeds", "1,2", "--updates", "13", "--cycles", "3", "--validations", "3",
           "--streams", "4", "--hidden", "16", "--log-interval", "1", "--jobs", "2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["arm"], r["seed"]) for r in rows) == [
        ("alternating", "1"), ("alternating", "2"), ("real-restarts", "1"), ("real-restarts", "2")]
    for r in rows:
        name = f"ptb-T5-{r['arm']}-s{r['seed']}"
        eval_log = (out / "logs" / f"{name}.eval.log").read_text()
        assert float(r["test_ppl"]) == float(re.search(r"Perplexity: ([0-9.]+)", eval_log).group(1))
        train_log = (out / "logs" / f"{name}.train.log").read_text()
        # 13 updates -> 12 (three whole 4-update cycles): the run ends where the cosine ends
        assert "--max-update 12 " in train_log.splitlines()[0]
        assert int(r["updates"]) == 12
        modes = [m for m in re.findall(r'"dni_synthetic": "([01])"', train_log)]
        want = ["1"] * 4 + ["0"] * 4 + ["1"] * 4 if r["arm"] == "alternating" else ["0"] * 12
        assert modes[:12] == want
    table = (out / "table.md").read_text()
    assert "Alternating" in table and "real-restarts" in table
    page = (out / "README.md").read_text()
    assert "No number on this page was typed by hand" in page and table in page
    # a second call skips finished runs (logs present) and only re-reports
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "finished" not in again.stdout


def test_report_only_regenerates_the_committed_page_byte_for_byte(tmp_path):
    """The study's page, table and CSV are what --report-only makes of the committed logs, byte for byte."""
    here = Path(alternation_grid.__file__).parent
    (tmp_path / "notes.md").write_bytes((here / "notes.md").read_bytes())   # the hand-written reading
    written = grid.report_all(str(here / "logs"), str(tmp_path))
    for name in ("README.md", "table.md", "results.csv"):
        assert (tmp_path / name).read_bytes() == (here / name).read_bytes(), f"{here / name} is stale"
    assert sorted(os.path.basename(f) for f in written) == sorted(
        f for f in os.listdir(here) if f.endswith((".csv", ".md", ".png")))
