"""examples/quickstart.sh trains with the method, and examples/plot_run.py reads what it did back
from the run's own log. (The quickstart itself takes minutes on PTB; its measured output is in
studies/quickstart/quickstart_*.log. Here: its fairseq-train flags, then those flags on tiny data.)"""
import os
import re
import subprocess
import sys

from helpers import REPO, TINY_MODEL, fairseq, train_inner


def quickstart_command(work):
    """The number of updates and the fairseq-train arguments examples/quickstart.sh uses."""
    proc = subprocess.run(["bash", "-c", 'source examples/quickstart.sh && printf "%s\\n" "$updates" "${train[@]}"'],
                          cwd=REPO, env=dict(os.environ, DNI_WORK=str(work)), capture_output=True, text=True, check=True)
    updates, *argv = proc.stdout.splitlines()
    return int(updates), argv


def cycle_starts(period, t_mult, last):
    """First update (1-based) of every cosine cycle up to update ``last``, computed here."""
    starts, length = [1], period
    while starts[-1] + length <= last:
        starts.append(starts[-1] + length)
        length *= t_mult
    return starts


def test_quickstart_trains_alternating_synthetic_and_real_gradients(tmp_path):
    from fairseq import options

    updates, argv = quickstart_command(tmp_path)
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    assert (args.criterion, args.optimizer, args.lr_scheduler, args.mode_schedule) == (
        "dni_cross_entropy", "alternating", "cosine_alternating", "alternate")
    assert args.max_update == updates and args.warmup_updates == 0
    starts = cycle_starts(args.lr_period_updates, args.t_mult, updates)
    assert len(starts) >= 3  # at least two mode switches
    # the log can show every switch exactly (an interval never straddles one), validation runs often
    assert all((s - 1) % args.log_interval == 0 for s in starts) and updates % args.log_interval == 0
    assert updates // args.validate_interval_updates >= 10
    assert args.log_format == "json"


def test_plot_run_reads_the_switches_from_a_run_with_the_quickstart_flags(tiny_data, tmp_path):
    _, argv = quickstart_command(tmp_path)
    # the quickstart's command on tiny data: a tiny model, 3-update first cycle, intervals of 2
    # updates that straddle the switches (their dni_synthetic is a fraction)
    argv[0] = str(tiny_data)
    tiny = [*TINY_MODEL, "--decoder-out-embed-dim", "16", "--batch-size", "4", "--tokens-per-sample", "7",
            "--lr-period-updates", "3",
            "--max-update", "21", "--validate-interval-updates", "7", "--log-interval", "2"]
    out = fairseq("fairseq-train", *argv, *tiny, "--save-dir", tmp_path / "ckpt")
    log = tmp_path / "train.log"
    log.write_text(out)
    synthetic = [float(r["dni_synthetic"]) for r in train_inner(out)]
    assert 0 < synthetic[1] < 1  # the interval (2, 4] holds the first switch

    png = tmp_path / "run.png"
    report = subprocess.run([sys.executable, os.path.join(REPO, "examples", "plot_run.py"), log, "--png", png],
                            capture_output=True, text=True, check=True).stdout
    # cycles of 3, 6, 12 updates (t_mult 2), synthetic first: updates 1-3, 4-9, 10-21
    assert re.findall(r"^\s*(\d+)-(\d+)\s+(\w+)", report, re.M) == [
        ("1", "3", "synthetic"), ("4", "9", "real"), ("10", "20", "synthetic")]
    assert "mode switches at updates 4 (real), 10 (synthetic)" in report
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_quickstart_logs_come_from_todays_command(tmp_path):
    """studies/quickstart/quickstart_{train,eval}.log (the README quotes them) were written by the current
    examples/quickstart.sh, and plot_run reads the switches of its schedule from them."""
    log = os.path.join(REPO, "studies", "quickstart", "quickstart_train.log")
    with open(log) as f:
        logged = f.readline().split()
    assert logged[:2] == ["#", "fairseq-train"]
    updates, argv = quickstart_command(tmp_path / "work")

    def relative(words, work):
        return [w.replace(work, "WORK") for w in words]

    assert relative(logged[2:], logged[2][: -len("/data-bin")]) == relative(argv, str(tmp_path / "work"))

    from fairseq import options

    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    starts = cycle_starts(args.lr_period_updates, args.t_mult, updates)
    modes = ["synthetic" if i % 2 == 0 else "real" for i in range(len(starts))]
    report = subprocess.run([sys.executable, os.path.join(REPO, "examples", "plot_run.py"), log],
                            capture_output=True, text=True, check=True).stdout
    assert ("mode switches at updates " + ", ".join(f"{s} ({m})" for s, m in zip(starts[1:], modes[1:]))) in report
    with open(os.path.join(REPO, "studies", "quickstart", "quickstart_eval.log")) as f:
        assert re.search(r"Perplexity: [0-9.]+", f.read())
