"""benchmarks/gpu_check.sh --cpu --tiny: the GPU check's whole path on the CPU, so it cannot rot
while no GPU is lent (docs/gpu_check.md). One run (about a minute on 2 cores), then its CSV,
summary and copies are checked against the check's own tables."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import gpu_check  # noqa: E402


def test_recipe_flags_are_the_array_bash_reads():
    for name in ("wikitext103", "ptb"):
        script = f'eval "$(sed -n "/^TRAIN_FLAGS=(/,/^)/p" recipes/{name}.sh)"; printf "%s\\n" "${{TRAIN_FLAGS[@]}}"'
        bash = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
        assert gpu_check.recipe_flags(name) == bash.stdout.splitlines()


def test_merged_writes_each_flag_once_with_the_later_value():
    base = ["data", "--a", "1", "--flag", "--b", "x", "--c", "(0.9, 0.98)"]
    assert gpu_check.merged(base, ["--a", "2", "--d"], drop=("--b",)) == \
        ["data", "--flag", "--c", "(0.9, 0.98)", "--a", "2", "--d"]


def number(x):
    return float(x) if x not in ("", None) else float("nan")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--cpu", "--tiny", "--python", sys.executable,
         "--work", str(root / "work"), "--results", str(root / "results"), "--out", str(root / "out")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-6000:]
    with open(root / "results" / "gpu_check.csv", newline="") as f:
        rows = {(r["config"], r["arm"]): r for r in csv.DictReader(f)}
    return root, rows, proc.stdout


def test_every_configuration_ran_with_finite_numbers(tiny_run):
    _, rows, _ = tiny_run
    for cfg in gpu_check.THROUGHPUT:
        bare = rows[(cfg.name, "bare")]
        assert bare["status"] == "ok"
        for arm in cfg.arms:
            r = rows[(cfg.name, arm)]
            assert r["status"] == "ok", (cfg.name, arm, r["status"])
            tps, bare_tps = number(r["tokens_per_s"]), number(r["bare_tokens_per_s"])
            assert tps > 0 and bare_tps > 0 and math.isfinite(tps)
            assert number(bare["tokens_per_s"]) == bare_tps
            assert number(r["ratio_to_bare"]) == pytest.approx(tps / bare_tps, rel=1e-4)
            epoch = gpu_check.CORPORA[cfg.corpus].epoch_tokens
            assert int(r["epoch_tokens"]) == epoch
            assert number(r["epoch_hours"]) == pytest.approx(epoch / tps / 3600, rel=1e-4)
            assert r["losses_finite"] == "True"
            # the arm really ran in its mode: dni_synthetic of every logged interval
            want = gpu_check.arm_mode(arm)
            logged = r["dni_synthetic"].split(",") if r["dni_synthetic"] else []
            assert logged == ([f"{want:g}"] * 3 if want is not None else []), (arm, logged)
            assert r["sizes"] == bare["sizes"] and r["vocab"] == bare["vocab"]
    # the generated dictionaries have the tiny corpora's types, padded as fairseq pads them
    assert rows[("wt103-dni_lstm_lm_wikitext103", "bare")]["vocab"] == "2008"
    assert rows[("ptb-dni_lstm_lm", "bare")]["vocab"] == "304"
    assert rows[("wt103-dni_lstm_lm_wikitext103", "bare")]["sizes"] == "2x16, embed 16, out 8, adaptive 200,600"
    # the seed paper's AWD-LSTM shape in tiny form: unequal widths, the last one the tied embedding's
    assert rows[("ptb-dni_awd_lstm_lm", "bare")]["sizes"] == "16/16/8, embed 8, tied, full softmax"


def test_paper_awd_configuration_is_the_paper_recipe():
    cfg = next(c for c in gpu_check.THROUGHPUT if c.name == "ptb-dni_awd_lstm_lm")
    bptt, dni = gpu_check.paper_flags("ptb", "bptt"), gpu_check.paper_flags("ptb", "dni")
    assert cfg.flags[:2] == gpu_check.DNI
    assert cfg.flags[2:] + cfg.arms["tbptt"].flags == bptt
    synthetic = cfg.arms["synthetic-qrnn"].flags
    assert "--real-first-epochs" not in synthetic
    assert gpu_check.flag_value(synthetic, "--mode-schedule") == "synthetic"
    assert gpu_check.merged(cfg.flags[2:] + synthetic, [], drop=("--dni-mode", "--mode-schedule")) == \
        gpu_check.merged(dni, [], drop=("--real-first-epochs", "--mode-schedule"))
    for flag, value in (("--arch", "dni_awd_lstm_lm"), ("--batch-size", "20"), ("--tokens-per-sample", "200"),
                        ("--alpha", "2"), ("--beta", "1"), ("--base-optimizer", "adam"), ("--lr", "0.001"),
                        ("--clip-norm", "0.2")):
        assert gpu_check.flag_value(bptt, flag) == value, flag
    assert gpu_check.flag_value(synthetic, "--dni-synthesizer-cell") == "qrnn"
    assert gpu_check.flag_value(cfg.arms["synthetic-gru"].flags, "--dni-synthesizer-cell") == "gru"
    g = gpu_check.PAPER_GRID
    assert g.epochs == 320 and g.epoch_tokens == {"PTB": 929_589, "WikiText-2": 2_088_628}
    assert len(g.arm_rates) == 6 and set(g.arm_rates.values()) <= set(cfg.arms)


def test_mixed_precision_runs_cross_a_mode_switch_and_score(tiny_run):
    _, rows, _ = tiny_run
    period = gpu_check.TINY.period
    for p in gpu_check.PRECISION:
        r = rows[("precision", p.name)]
        if p.expect == "fail":
            assert r["status"] == "failed, as expected" and "xla_device" in r["note"]
            continue
        assert r["status"] == "ok", (p.name, r["status"])
        assert r["losses_finite"] == "True"
        assert r["dni_synthetic"] == "1,1,0,0" and r["mode_switch_after_update"] == str(period)
        assert number(r["dni_cos_max_abs"]) > 0
        ppl = number(r["eval_ppl"])
        assert math.isfinite(ppl) and ppl > 1
        assert rows[("precision", f"{p.name} eval-lm")]["status"] == "ok"
        assert ("--fp16" in r["command"]) == (p.name == "fp16")
    assert rows[("precision", "fp16")]["loss_scale"] == "128 -> 128"   # fairseq's --fp16-init-scale
    assert rows[("precision", "amp")]["loss_scale"] == "1 -> 1"        # GradScaler is off without CUDA
    assert rows[("precision", "bf16-hydra")]["loss_scale"] == "not logged"


def test_results_are_written_and_copied(tiny_run):
    root, rows, out = tiny_run
    for name in ("gpu_check.csv", "gpu_check.md", "environment.json", "runs.log", "install.log"):
        with open(root / "results" / name) as a, open(root / "out" / name) as b:
            assert a.read() == b.read(), name
    env = json.load(open(root / "results" / "environment.json"))
    import torch
    assert env["torch"] == torch.__version__ and env["gpu"] == "none (CPU run)"
    md = open(root / "results" / "gpu_check.md").read()
    assert "CPU, tiny sizes" in md and "trains in fp32 there" in md
    for (config, arm), r in rows.items():
        if r["section"] == "throughput":
            assert f"| {config} | {arm} | {r['sizes']} |" in md
        elif not arm.endswith("eval-lm"):
            assert f"| {arm} | {r['tool']} | {r['status']} |" in md
        else:
            assert f"{arm}: {r['status']}" in md
    assert "pending" not in md and "skipped" not in md
    # the paper grid's cost, derived from the measured rates
    tps = number(rows[("ptb-dni_awd_lstm_lm", "tbptt")]["tokens_per_s"])
    assert f"| tbptt | {tps:,.0f} | {320 * 929_589 / tps / 3600:,.2f} | {320 * 2_088_628 / tps / 3600:,.2f} |" in md
    assert "GPU-hours** (PTB" in md and "GPU-hours** (PTB" in out


def test_cpu_runs_never_write_into_the_gpu_results():
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--cpu", "--tiny",
                           "--python", sys.executable, "--results", os.path.join(REPO, "benchmarks", "results", "gpu")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "holds real GPU measurements only" in proc.stderr
