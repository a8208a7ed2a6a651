"""benchmarks/gpu_check.sh --cpu --tiny: the GPU check's whole path on the CPU, so that it cannot rot
while no GPU is lent (docs/gpu_check.md). One run of every configuration and precision at tiny sizes
(about 30 s of CPU), then its CSV, table and copies are checked against the check's own table and
against its logs read here."""
import csv
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.sh")
spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "benchmarks", "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def check(*args, root):
    # a budget above the script's 480 s default: the rehearsal shares CI's two cores with other tests
    return subprocess.run(["bash", SCRIPT, "--cpu", "--tiny", "--python", sys.executable, "--work", str(root / "work"),
                           "--budget", "900", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1100,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    proc = check("--results", str(root / "results"), "--out", str(root / "out"), root=root)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return root, read_csv(root / "results" / "gpu_check.csv")


def runs_log_sections(path):
    """{(config, precision): that run's log} from runs.log's '==== CONFIG PRECISION: ...' headers."""
    sections, key = {}, None
    for line in open(path):
        if line.startswith("==== "):
            config, precision = line[5:].split(":")[0].split()
            key = (config, precision)
            sections[key] = []
        elif key:
            sections[key].append(line)
    return sections


def test_every_configuration_ran_in_every_precision_with_finite_numbers(tiny):
    _, rows = tiny
    want = [(r["config"], r["precision"]) for r in gpu_check.runs(4)]
    assert [(r["config"], r["precision"]) for r in rows] == want
    precisions = [r["precision"] for r in rows]
    assert precisions == sorted(precisions, key=lambda p: p != "fp32")  # fp32 everywhere before the others
    for r in rows:
        assert r["status"] == "ok" and r["exit_code"] == "0", (r["config"], r["precision"], r["note"])
        for column in ("tokens_per_s", "peak_memory_mib", "train_loss", "seconds"):
            assert math.isfinite(float(r[column])) and float(r[column]) > 0, (r["config"], column)
        assert r["peak_memory_of"] == "CPU ru_maxrss" and r["paper_run_gpu_hours"] == ""
        flags = shlex.split(r["command"])
        assert flags[0] == "fairseq-train" and "--cpu" in flags
        assert {"fp32": [], "amp": ["--amp"], "bf16": ["--bf16"], "fp16": ["--fp16"]}[r["precision"]] == \
            [f for f in flags if f in ("--amp", "--bf16", "--fp16")]
        if r["precision"] in ("bf16", "fp16"):
            assert "--fp16-no-flatten-grads" in flags
        scored = r["precision"] == "fp32" and r["config"] in ("small-alternating", "paper-alternating")
        assert (r["eval_ppl"] != "") == scored
        if scored:  # a tiny model after 4 updates scores about the corpus' 300 types
            assert 100 < float(r["eval_ppl"]) < 1000


def test_tokens_per_s_and_modes_read_back_from_the_logs(tiny):
    root, rows = tiny
    sections = runs_log_sections(root / "results" / "runs.log")
    for r in rows:
        if r["status"] != "ok":
            continue
        # fairseq's format ("... | train_inner | {...}") or logging's default in a fresh process ("INFO:train_inner:{...}")
        inner = [json.loads(m.group(1)) for line in sections[(r["config"], r["precision"])]
                 for m in [re.search(r"train_inner(?: \| |:)(\{.*\})", line)] if m]
        assert len(inner) == 4  # --log-interval 1: the first is the warm-up, left out
        wpb, wps = [float(x["wpb"]) for x in inner[1:]], [float(x["wps"]) for x in inner[1:]]
        assert float(r["tokens_per_s"]) == pytest.approx(sum(wpb) / sum(b / s for b, s in zip(wpb, wps)), abs=0.06)
        assert float(r["train_loss"]) == float(inner[-1]["loss"])
        modes = [x.get("dni_synthetic") for x in inner]
        if "alternating" in r["config"]:
            assert modes == ["1", "1", "0", "0"]  # synthetic for half the run, then real
        elif "dni" in r["config"]:
            assert modes == ["1"] * 4
        else:
            assert modes == [None] * 4  # plain TBPTT: lm_cross_entropy


def test_results_are_copied_and_tabled(tiny):
    root, rows = tiny
    for name in ("gpu_check.csv", "gpu_check.md", "runs.log", "install.log"):
        assert (root / "results" / name).read_bytes() == (root / "out" / name).read_bytes(), name
    md = (root / "results" / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: CPU\n") and "--cpu --tiny" in md
    for r in rows:
        tps = f"{float(r['tokens_per_s']):,.0f}" if r["tokens_per_s"] else ""
        assert f"| {r['config']} | {r['precision']} | {r['status']} | {tps} |" in md
        if r["config"] == "paper-qrnn-lm" and r["status"] == "ok":   # the QRNN LM's line under the table
            assert f"* QRNN LM (`dni_awd_qrnn_lm`), {r['precision']}: {tps} tokens/s, no projection" in md


def test_qrnn_summary_projects_one_paper_run():
    """On a GPU the QRNN LM's line gives the hours of 320 epochs of PTB's 929,589 training tokens (887,521
    words and 42,068 </s>, as fairseq-preprocess binarizes ptb.train.txt) at its rate, beside the AWD-LSTM's."""
    fmt = lambda v, spec: "" if v in ("", None) else format(v, spec)  # noqa: E731  (write_results' own)
    rows = [dict(config=config, precision="fp32", status="ok", tokens_per_s=tps,
                 paper_run_gpu_hours=gpu_check.paper_run_hours(tps))
            for config, tps in (("paper-tbptt", 20_000.0), ("paper-qrnn-lm", 40_000.0))]
    assert gpu_check.paper_run_hours(40_000.0) == round(320 * (887_521 + 42_068) / 40_000 / 3600, 2) == 2.07
    assert gpu_check.qrnn_summary(rows, fmt) == [
        "", "* QRNN LM (`dni_awd_qrnn_lm`), fp32: 40,000 tokens/s, one 320-epoch PTB run 2.1 h; the AWD-LSTM "
        "(`paper-tbptt`): 20,000 tokens/s, one 320-epoch PTB run 4.1 h; QRNN/LSTM 2.00x tokens/s"]
    assert gpu_check.qrnn_summary([dict(rows[1], status="failed")], fmt) == []


def flag_values(words):
    """{flag: its value, or None for a switch} of a fairseq command line."""
    out, flag = {}, None
    for w in words:
        if w.startswith("--"):
            flag, out[w] = w, None
        else:
            out[flag] = w
    return out


def test_paper_size_is_the_paper_recipe():
    """The paper lines' flags are those recipes/paper/ptb.sh gives its dni arm on AWD-LSTM with the
    coordinate-wise synthesizer (--synthesizer coordinatewise --base lstm), as bash reads them."""
    script = 'source recipes/paper/ptb.sh && paper_arm dni coordinatewise lstm && printf "%s\\n" "${TRAIN_FLAGS[@]}"'
    recipe = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    recipe = flag_values(recipe)
    ours = flag_values((gpu_check.SIZES["paper"][0] + " " + gpu_check.GROUPS["QRNN"]).split())
    assert len(ours) == 20 and {flag: recipe.get(flag, "missing") for flag in ours} == ours
    assert flag_values(gpu_check.GROUPS["DNI"].split())["--dni-scale"] == recipe["--dni-scale"]


def test_cpu_runs_never_write_into_the_gpu_results(tmp_path):
    gpu_results = os.path.join(REPO, "benchmarks", "results", "gpu")
    before = sorted(os.listdir(gpu_results)) if os.path.isdir(gpu_results) else None
    proc = check("--results", gpu_results, root=tmp_path)
    assert proc.returncode == 1 and "holds GPU measurements only" in proc.stdout
    assert (sorted(os.listdir(gpu_results)) if os.path.isdir(gpu_results) else None) == before
