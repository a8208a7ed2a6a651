"""The GPU check's runs (docs/gpu_check.md): stock fairseq-train at each line of ``RUNS`` in each of its
precisions, fairseq-eval-lm where a line says ``eval``; one CSV row per run and a markdown table,
rewritten after every run. Started by benchmarks/gpu_check.sh, which installs what is missing first.

Each run is a child forked from this process after fairseq, the plugin, torch's compiler front end and
Hydra are loaded (paid once; this process never initialises CUDA, and a forked probe checks that a
child can; if not, every run is a fresh ``python gpu_check.py --child``). A child runs fairseq-train's
own ``cli_main`` steps (parse, ``convert_namespace_to_omegaconf``, ``distributed_utils.call_main(cfg,
train.main)``) with one change: ``cfg.common.tpu`` stays False, since fairseq's options.py sets it
whenever ``--bf16`` is given and the trainer then asks torch_xla for a device (facebookresearch/
fairseq#4696; fairseq-hydra-train with ``common.bf16=true`` leaves it False too). Tokens/s: fairseq's
``wps`` over the logged intervals after the first (the warm-up). Peak memory: ``torch.cuda.
max_memory_allocated`` over the run, read by a hook on ``torch.cuda.reset_peak_memory_stats``, which
fairseq's trainer calls after every update (its ``gb_free`` is one update's, to 0.1 GB); CPU: ru_maxrss.
"""
import argparse
import csv
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import string
import subprocess
import sys
import time
import traceback
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "fairseq_dni")

# ---- what runs: one line per configuration ---------------------------------------------------
# name, size (SIZES), precisions (every line's first precision runs before any line's second, so a
# short budget keeps fp32 everywhere), eval (fairseq-eval-lm on the fp32 run's checkpoint) or -, then
# fairseq-train flags after the size's ($NAME: a group below; {updates}, {half}: the run's length and
# half of it).
RUNS = """
small-tbptt        small  fp32,amp,bf16,fp16  -     $TBPTT
small-dni-mlp      small  fp32,amp,bf16,fp16  -     $DNI --dni-synthesizer mlp --mode-schedule synthetic
small-alternating  small  fp32,amp,bf16,fp16  eval  $DNI --dni-synthesizer mlp $ALTERNATE
paper-tbptt        paper  fp32,amp,bf16,fp16  -     $TBPTT
paper-dni-qrnn     paper  fp32,amp,bf16,fp16  -     $DNI $QRNN --mode-schedule synthetic
paper-alternating  paper  fp32,amp,bf16,fp16  eval  $DNI $QRNN $ALTERNATE
paper-dni-scan     paper  fp32,amp            -     $DNI --dni-synthesizer scan --dni-synthesizer-init paper --mode-schedule synthetic
paper-qrnn-lm      paper  fp32,amp            -     $TBPTT --arch dni_awd_qrnn_lm
"""
GROUPS = {
    "TBPTT": "--criterion lm_cross_entropy --lr-scheduler fixed",
    "DNI": "--criterion dni_cross_entropy --dni-scale 0.1 --lr-scheduler cosine_alternating --lr-period-updates {updates}",
    # the coordinate-wise QRNN synthesizer as recipes/paper/_arms.sh runs it with --synthesizer coordinatewise
    # (the paper's --sgtype QRNN as its code computes it is the scan synthesizer: paper-dni-scan)
    "QRNN": "--dni-synthesizer coordinatewise --dni-synthesizer-cell qrnn --dni-synthesizer-hidden 50 "
            "--dni-synthesizer-layers 1 --dni-lr 0.001 --dni-weight-decay 1.2e-6",
    # synthetic for the first half of the run, then real (one cosine cycle each)
    "ALTERNATE": "--lr-period-updates {half} --mode-schedule alternate --first-mode synthetic",
}
SIZES = {  # full size, then the --tiny overrides (later flags win in fairseq's argparse)
    "small": ("--task dni_language_modeling --arch dni_lstm_lm_small --batch-size 20 --tokens-per-sample 35 "
              "--optimizer alternating --base-optimizer adam --lr 0.001 --clip-norm 0.25",
              "--decoder-embed-dim 16 --decoder-hidden-size 16 --batch-size 4 --tokens-per-sample 10"),
    # recipes/paper/ptb.sh --base lstm's TRAIN_FLAGS less epochs, seed and logging (tests/test_gpu_check.py checks)
    "paper": ("--task dni_language_modeling --arch dni_awd_lstm_lm --batch-size 20 --tokens-per-sample 200 "
              "--variable-window --decoder-dropout-in 0.4 --decoder-hidden-dropout 0.3 --alpha 2 --beta 1 "
              "--optimizer alternating --base-optimizer adam --lr 0.001 --weight-decay 1.2e-6 --clip-norm 0.2",
              "--decoder-embed-dim 8 --decoder-hidden-size 16 --batch-size 4 --tokens-per-sample 20"),
}
# fp16/bf16 wrap the alternating optimizer with unflattened gradients (fairseq_dni/optim/alternating.py)
PRECISIONS = {"fp32": "", "amp": "--amp", "bf16": "--bf16 --fp16-no-flatten-grads",
              "fp16": "--fp16 --fp16-no-flatten-grads"}
# the seed paper's run: 320 epochs of PTB's training split as fairseq-preprocess binarizes it, 929,589 tokens
# (887,521 words + 42,068 </s>, one a line; counted in the binarized train split of python -m studies.paper_grid)
PAPER_RUN_TOKENS = 320 * 929_589
COLUMNS = ["config", "size", "precision", "status", "exit_code", "seconds", "tokens_per_s", "peak_memory_mib",
           "peak_memory_of", "train_loss", "eval_ppl", "paper_run_gpu_hours", "note", "command"]


def runs(updates):
    """Every (line, precision) as a dict: config, size, precision, eval, flags; first precisions first."""
    out = []
    for line in RUNS.strip().splitlines():
        name, size, precisions, ev, rest = line.split(None, 4)
        flags = string.Template(rest).substitute(GROUPS).format(updates=updates, half=max(1, updates // 2)).split()
        out += [dict(config=name, size=size, precision=p, eval=ev == "eval" and p == "fp32", order=i,
                     flags=flags + PRECISIONS[p].split()) for i, p in enumerate(precisions.split(","))]
    return sorted(out, key=lambda r: r["order"])


# ---- one child: fairseq-train, fairseq-eval-lm or fairseq-preprocess -------------------------
def child(tool, argv):
    import torch
    from fairseq import distributed_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import eval_lm, preprocess, train
    sys.argv = ["fairseq-" + tool.replace("_", "-")] + argv
    if tool == "preprocess":
        return preprocess.cli_main()
    peak = [0]
    if torch.cuda.is_available():
        reset = torch.cuda.reset_peak_memory_stats

        def hooked(device=None):
            peak[0] = max(peak[0], torch.cuda.max_memory_allocated(device))
            reset(device)
        torch.cuda.reset_peak_memory_stats = hooked
    args = options.parse_args_and_arch(options.get_training_parser() if tool == "train" else options.get_eval_lm_parser())
    cfg = convert_namespace_to_omegaconf(args)
    cfg.common.tpu = False  # the module's docstring: --bf16 on a GPU
    distributed_utils.call_main(cfg, train.main if tool == "train" else eval_lm.main)
    if torch.cuda.is_available():
        mib, of = max(peak[0], torch.cuda.max_memory_allocated()) / 2**20, "cuda max_memory_allocated"
        device = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        mib, of, device = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "CPU ru_maxrss", "CPU"
    print(f"[gpu_check] peak_memory_mib={mib:.1f} of={of} device={device}", flush=True)


def run_child(tool, argv, log, timeout, spawn):
    """(exit status or 'timeout', seconds) of ``child(tool, argv)`` forked (or spawned), output in ``log``."""
    t0, timeout = time.time(), max(1.0, timeout)
    if spawn:
        with open(log, "w") as f:
            try:
                return subprocess.run([sys.executable, __file__, "--child", tool] + argv, stdout=f,
                                      stderr=subprocess.STDOUT, timeout=timeout).returncode, time.time() - t0
            except subprocess.TimeoutExpired:
                return "timeout", time.time() - t0
    sys.stdout.flush(), sys.stderr.flush()  # nothing buffered twice
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1), os.dup2(fd, 2)
            child(tool, argv) if tool != "probe" else __import__("torch").ones(1, device="cuda").sum().item()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    while time.time() - t0 < timeout:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), time.time() - t0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL), os.waitpid(pid, 0)
    return "timeout", time.time() - t0


def read_log(text):
    """tokens/s (fairseq's wps over the logged intervals after the first), last loss, the peak-memory line."""
    inner = [json.loads(m) for m in re.findall(r"train_inner[ |:]+(\{.*\})", text)]
    timed = [r for r in inner[1:] if float(r["wps"]) > 0]  # each interval holds --log-interval updates
    seconds = sum(float(r["wpb"]) / float(r["wps"]) for r in timed)
    peak = re.search(r"\[gpu_check\] peak_memory_mib=(\S+) of=(.*) device=(.*)", text)
    return dict(tokens_per_s=round(sum(float(r["wpb"]) for r in timed) / seconds, 1) if seconds else math.nan,
                train_loss=float(inner[-1]["loss"]) if inner else math.nan,
                peak_memory_mib=float(peak.group(1)) if peak else math.nan,
                peak_memory_of=peak.group(2) if peak else "", device=peak.group(3) if peak else None)


def last_error(text):
    lines = [l.strip() for l in text.splitlines() if l.strip()] or [""]
    return ([l for l in lines if re.search(r"error|Error|Exception", l)] or lines)[-1][:300]


# ---- the check -------------------------------------------------------------------------------
def make_corpus(folder, types, tokens, seed=0):
    """train/valid/test.txt of Zipf-distributed words w0..w{types-1}, 20 a line (valid, test: tokens / 20)."""
    os.makedirs(folder, exist_ok=True)
    words, weights, rng = [f"w{i}" for i in range(types)], [1 / (i + 1) for i in range(types)], random.Random(seed)
    for split, n in (("train", tokens), ("valid", tokens // 20), ("test", tokens // 20)):
        drawn = rng.choices(words, weights, k=n)
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.writelines(" ".join(drawn[i:i + 20]) + "\n" for i in range(0, n, 20))


def paper_run_hours(tokens_per_s):
    """Projected hours of one seed-paper run (320 epochs of PTB, ``PAPER_RUN_TOKENS``) at ``tokens_per_s``."""
    return round(PAPER_RUN_TOKENS / tokens_per_s / 3600, 2)


def qrnn_summary(rows, fmt):
    """Lines under the table for the QRNN LM (issue 22): each finished ``paper-qrnn-lm`` run's tokens/s and
    projected hours of one 320-epoch PTB run, beside ``paper-tbptt`` (the AWD-LSTM) in the same precision."""
    done = {(r["config"], r["precision"]): r for r in rows if r["status"] == "ok"}

    def rate(r):
        hours = fmt(r["paper_run_gpu_hours"], ".1f")
        return (f"{fmt(r['tokens_per_s'], ',.0f')} tokens/s, " +
                (f"one 320-epoch PTB run {hours} h" if hours else "no projection (not a GPU run)"))

    lines = []
    for (config, precision), q in done.items():
        if config == "paper-qrnn-lm":
            lstm = done.get(("paper-tbptt", precision))
            lines.append(f"* QRNN LM (`dni_awd_qrnn_lm`), {precision}: {rate(q)}" + (
                "" if lstm is None else f"; the AWD-LSTM (`paper-tbptt`): {rate(lstm)}; QRNN/LSTM "
                                        f"{float(q['tokens_per_s']) / float(lstm['tokens_per_s']):.2f}x tokens/s"))
    return [""] + lines if lines else []


def write_results(rows, a, env):
    fmt = lambda v, spec: "" if v in ("", None) or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
    with open(os.path.join(a.results, "gpu_check.csv"), "w", newline="") as f:  # NaN: not measured, left empty
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        w.writeheader(), w.writerows([{k: fmt(v, "") for k, v in r.items()} for r in rows])
    md = [f"# GPU check: {env['device'] or 'device not read'}", "",
          f"{env['when']}, commit {env['commit']}; Python {env['python']}, torch {env['torch']}, fairseq "
          f"{env['fairseq']}; `bash benchmarks/gpu_check.sh{' --cpu' if a.cpu else ''}{' --tiny' if a.tiny else ''}`: "
          f"{a.updates} updates a run, tokens/s over updates {a.log_interval + 1}-{a.updates}; peak memory: "
          f"{next((r['peak_memory_of'] for r in rows if r['peak_memory_of']), '')} (MiB); paper run GPU-h: the "
          "projected hours of one 320-epoch PTB run (929,589 training tokens an epoch, </s> included) at that rate.", "",
          "| config | precision | status | tokens/s | peak MiB | eval ppl | paper run GPU-h | note |",
          "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    md += [f"| {r['config']} | {r['precision']} | {r['status']} | {fmt(r['tokens_per_s'], ',.0f')} | "
           f"{fmt(r['peak_memory_mib'], ',.0f')} | {fmt(r['eval_ppl'], '.2f')} | {fmt(r['paper_run_gpu_hours'], '.1f')} | "
           f"{r['note'].replace('|', '/')} |" for r in rows]
    md += qrnn_summary(rows, fmt)
    with open(os.path.join(a.results, "gpu_check.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    for name in ("gpu_check.csv", "gpu_check.md", "runs.log") if a.out else ():
        os.makedirs(a.out, exist_ok=True), shutil.copy(os.path.join(a.results, name), a.out)


def main():
    p = argparse.ArgumentParser(description="the GPU check's runs (started by benchmarks/gpu_check.sh)")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and corpus")
    p.add_argument("--work", required=True, help="scratch: corpus, checkpoints, each run's log")
    p.add_argument("--results", required=True, help="gpu_check.csv, gpu_check.md, runs.log")
    p.add_argument("--out", default="", help="also copy the results here after every run")
    p.add_argument("--deadline", type=float, required=True, help="start no run that would end after this (epoch s)")
    p.add_argument("--updates", type=int, default=60, help="updates a run")
    p.add_argument("--log-interval", type=int, default=10, help="the first interval is the warm-up")
    p.add_argument("--run-timeout", type=float, default=150, help="seconds one run may take")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True), os.makedirs(a.results, exist_ok=True)
    import fairseq_cli.train  # first: its logging format is the one the logs get
    import fairseq_cli.eval_lm, fairseq_cli.preprocess  # noqa: E401,F401
    import fairseq
    import torch
    import torch._dynamo  # noqa: F401  torch.optim's first optimizer imports it (seconds)
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    fairseq.utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))  # all paid once, before any fork:
    with warnings.catch_warnings():  # Hydra's deprecation notices; each child's log has them
        warnings.simplefilter("ignore")
        convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(),
                                                                   [a.work, *SIZES["small"][0].split()]))
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    env = dict(device=None, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
               commit=commit.stdout.strip() or "unknown (no .git)", python=sys.version.split()[0], fairseq=fairseq.__version__)
    open(runs_log := os.path.join(a.results, "runs.log"), "w").close()
    # can a forked child use CUDA? (this process never initialised it)
    # on the CPU fresh processes: a child forked after torch's CPU thread pools started can crash at exit
    spawn = a.cpu or run_child("probe", [], os.path.join(a.work, "probe.log"), 120, spawn=False)[0] != 0
    print(f"[gpu_check] runs are {'fresh processes' if spawn else 'forked'}")
    t0, text, data = time.time(), os.path.join(a.work, "text"), os.path.join(a.work, "data-bin")
    make_corpus(text, types=300 if a.tiny else 10_000, tokens=20_000 if a.tiny else 400_000)
    status = run_child("preprocess", ["--only-source", "--destdir", data, "--workers", str(min(8, os.cpu_count())),
                                      *[f"--{s}pref={text}/{s}.txt" for s in ("train", "valid", "test")]],
                       os.path.join(a.work, "preprocess.log"), 300, spawn)[0]
    if status != 0:
        sys.exit(f"gpu_check: fairseq-preprocess failed ({status}): see {a.work}/preprocess.log")
    print(f"[gpu_check] corpus: {time.time() - t0:.1f} s")
    common = ["--user-dir", USER_DIR, "--num-workers", "0"] + (["--cpu"] if a.cpu else [])
    rows, longest = [], {}
    for r in runs(a.updates):
        size, tiny = SIZES[r["size"]]
        save = os.path.join(a.work, "checkpoints", f"{r['config']}-{r['precision']}")
        flags = [data, *size.split(), *r["flags"], *(tiny.split() if a.tiny else []), *common, "--seed", "1",
                 "--no-progress-bar", "--log-format", "json", "--log-interval", str(a.log_interval), "--max-update",
                 str(a.updates), "--disable-validation", "--save-dir", save,
                 *(["--no-epoch-checkpoints"] if r["eval"] else ["--no-save"])]
        row = dict(dict.fromkeys(COLUMNS, ""), config=r["config"], size=r["size"], precision=r["precision"],
                   command="fairseq-train " + " ".join(flags))
        left = a.deadline - time.time()
        if left < longest.get(r["size"], 0) + 5:
            rows.append(dict(row, status="skipped", note=f"time budget: {left:.0f} s left"))
            write_results(rows, a, env)
            continue
        log = os.path.join(a.work, f"{r['config']}-{r['precision']}.log")
        status, secs = run_child("train", flags, log, min(a.run_timeout, left), spawn)
        longest[r["size"]] = max(longest.get(r["size"], 0), secs)
        out = open(log, errors="replace").read()
        got = read_log(out)
        env["device"] = env["device"] or got.pop("device")
        ok = status == 0 and math.isfinite(got["tokens_per_s"]) and math.isfinite(got["train_loss"])
        row.update(got, exit_code=status, seconds=round(secs, 1), status="ok" if ok else "failed")
        if r["size"] == "paper" and ok and not a.cpu:
            row["paper_run_gpu_hours"] = paper_run_hours(got["tokens_per_s"])
        if status == "timeout":
            row.update(status="timeout", note=f"stopped after {secs:.0f} s")
        elif not ok:
            row["note"] = last_error(out) if status != 0 else "no finite tokens/s or loss in the log"
        if ok and r["eval"]:
            elog = log[:-4] + "-eval.log"
            estatus, esecs = run_child("eval_lm", [data, *common, "--task", "dni_language_modeling", "--path",
                                                   os.path.join(save, "checkpoint_last.pt"), "--gen-subset", "test",
                                                   "--batch-size", "10", "--tokens-per-sample", "20" if a.tiny else "200"],
                                       elog, min(a.run_timeout, a.deadline - time.time()), spawn)
            eout = open(elog, errors="replace").read()
            m = re.search(r"Perplexity: (\S+)", eout) if estatus == 0 else None
            row["eval_ppl"] = float(m.group(1)) if m else math.nan
            row["note"] = f"fairseq-eval-lm, test split: {esecs:.0f} s" if m else f"fairseq-eval-lm: {last_error(eout)}"
            row["status"] = "ok" if math.isfinite(row["eval_ppl"]) else "failed"
            out += "\n" + eout
        with open(runs_log, "a") as f:
            f.write(f"==== {r['config']} {r['precision']}: {row['status']}, exit {status}, {secs:.1f} s\n{out}\n")
        rows.append(row)
        write_results(rows, a, env)
        print(f"[gpu_check] {r['config']:<18} {r['precision']:<5} {row['status']:<8} {secs:6.1f} s  "
              f"{got['tokens_per_s']:10,.0f} tokens/s  {got['peak_memory_mib']:8,.0f} MiB  {row['note'][:80]}", flush=True)
    bad = [r for r in rows if r["status"] in ("failed", "timeout")]
    print(f"[gpu_check] {len(rows) - len(bad)} of {len(rows)} runs ok or skipped; results in {a.results}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    child(sys.argv[2], sys.argv[3:]) if sys.argv[1:2] == ["--child"] else main()
