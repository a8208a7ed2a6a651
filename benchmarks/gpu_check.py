"""The GPU check of fairseq-dni: throughput, mixed precision and memory in one run.

Started by ``benchmarks/gpu_check.sh`` (which installs what is missing first); see
docs/gpu_check.md. In one run, on one GPU (``--cpu --tiny``: on the CPU at tiny sizes):

* **Throughput.** Stock ``fairseq-train`` at each configuration's real sizes (table
  ``THROUGHPUT`` below) on a generated corpus with the real corpus' vocabulary size, in
  each arm (plain TBPTT, ``dni_cross_entropy`` in real and in synthetic mode; fairseq's own
  ``lstm_lm`` for the per-step loop we replace), against a bare PyTorch ``nn.LSTM`` loop of
  the same sizes (``bare_lstm.py``) run just before. Tokens/s is fairseq's ``wps`` over
  the logged intervals after the first (``throughput.measured_tokens_per_s``); the
  projected epoch is the real corpus' training tokens over that rate. The seed paper's
  full-size configuration (``ptb-dni_awd_lstm_lm``, the flags of ``recipes/paper/``) also
  gives the GPU-hours of one paper run per arm and of the paper's whole grid (``PAPER_GRID``).
* **Mixed precision** (table ``PRECISION``): short runs of the WikiText-103 alternating
  recipe that cross one mode switch, then ``fairseq-eval-lm`` on the checkpoint; checked:
  finite losses, the switch at the predicted update, a non-zero ``dni_cos``, the loss scale.
* **Memory**: the peak of torch's CUDA allocator (allocated and reserved) in every run.

Every run is a child process: forked from this process after fairseq is imported (so the
import is paid once; CUDA is never touched here, and a forked child's first CUDA call is
checked before the others rely on it), or, with ``--spawn`` or when that check fails, a
fresh ``python gpu_check.py --child``. A child calls the console script's own entry point
(``fairseq_cli.train.cli_main`` is ``fairseq-train``) with the same arguments, then records
its peak memory. After every run the CSV, the summary and the logs are rewritten in
``--results`` and copied to ``--out``, so a run stopped by a time limit still leaves them.
"""

import argparse
import csv
import dataclasses
import functools
import glob
import hashlib
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
USER_DIR = os.path.join(REPO, "fairseq_dni")
sys.path.insert(0, HERE)


# ==== what is measured (adding a configuration is one line in one of these tables) ========

@dataclass
class Corpus:
    label: str
    types: int          # word types of the real corpus, <unk> included (generated here)
    epoch_tokens: int   # training tokens of the real corpus, one </s> per line included
    tiny_types: int     # --tiny


CORPORA = {
    # WikiText-103 and PTB training splits as fairseq counts them (words + one </s> per line), e.g.
    # PTB: 887,521 words + 42,068 lines; the same count for WikiText-2 (2,051,910 + 36,718) gives
    # Merity et al.'s 2,088,628, so their 103,227,021 for WikiText-103 counts </s> too.
    "wt103": Corpus("WikiText-103", types=267_735, epoch_tokens=103_227_021, tiny_types=2_000),
    "ptb": Corpus("PTB", types=10_000, epoch_tokens=929_589, tiny_types=300),
}


@dataclass
class Arm:
    flags: List[str]                        # appended to the configuration's flags (later flags win)
    drop: Tuple[str, ...] = ()              # flags of the configuration this arm has no use for (with their value)


# fairseq's adaptive_loss refuses the default --ddp-backend (pytorch_ddp) even on one GPU
LEGACY_DDP = {"adaptive_loss": ["--ddp-backend", "legacy_ddp"]}


def dni_arms(tbptt_criterion):
    """Plain TBPTT, and dni_cross_entropy held in real / in synthetic mode by cosine_alternating."""
    return {
        "tbptt": Arm(["--criterion", tbptt_criterion, "--mode-schedule", "real"] + LEGACY_DDP.get(tbptt_criterion, []),
                     drop=("--dni-scale",)),
        "real": Arm(["--criterion", "dni_cross_entropy", "--dni-mode", "real", "--mode-schedule", "real"]),
        "synthetic": Arm(["--criterion", "dni_cross_entropy", "--dni-mode", "synthetic",
                          "--mode-schedule", "synthetic"]),
        # the seed paper's coordinate-wise recurrent synthesizer (GRU, 50 units; its Adam 1e-3)
        "synthetic-coordinatewise": Arm(["--criterion", "dni_cross_entropy", "--dni-mode", "synthetic",
                                         "--mode-schedule", "synthetic", "--dni-synthesizer", "coordinatewise",
                                         "--dni-lr", "1e-3"]),
    }


def recipe_flags(name):
    """The TRAIN_FLAGS array of recipes/<name>.sh (the recipe is the one source of its flags)."""
    with open(os.path.join(REPO, "recipes", f"{name}.sh")) as f:
        text = f.read()
    body = re.search(r"^TRAIN_FLAGS=\((.*?)^\)", text, re.S | re.M)
    if body is None:
        raise SystemExit(f"gpu_check: no TRAIN_FLAGS=( ... ) in recipes/{name}.sh")
    return shlex.split(body.group(1), comments=True)


def paper_flags(corpus, arm):
    """The fairseq-train flags of the seed paper's ARM on CORPUS, full size: ``TRAIN_FLAGS`` as
    ``recipes/paper/<corpus>.sh`` builds it (bash's own reading of ``recipes/paper/_arms.sh``)."""
    return list(_paper_flags(corpus, arm))


@functools.lru_cache(maxsize=None)
def _paper_flags(corpus, arm):
    script = f'source recipes/paper/{corpus}.sh && paper_arm {shlex.quote(arm)} && printf "%s\\0" "${{TRAIN_FLAGS[@]}}"'
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"gpu_check: recipes/paper/{corpus}.sh --arm {arm}: {proc.stderr.strip()}")
    return tuple(proc.stdout.split("\0")[:-1])


def paper_arms():
    """The arms of the seed paper's grid, as ``recipes/paper/_arms.sh`` lists them (``ARMS=...``)."""
    with open(os.path.join(REPO, "recipes", "paper", "_arms.sh")) as f:
        return re.search(r'^ARMS="([^"]*)"', f.read(), re.M).group(1).split()


def recipe_train_tokens(name):
    """The training split's tokens (one </s> per line) a corpus recipe expects (its ``EXPECTED`` train line)."""
    with open(os.path.join(REPO, "recipes", f"{name}.sh")) as f:
        return int(re.search(r'^\s*"train (\d+) (\d+) ', f.read(), re.M).group(2))


def split_common(a, b):
    """Two command lines as (their common first flags, the rest of a, the rest of b)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n and any(n < len(x) and not x[n].startswith("--") for x in (a, b)):
        n -= 1   # never cut a flag from its values
    return a[:n], a[n:], b[n:]


def flag_value(flags, name):
    """The value fairseq reads for ``name`` (its last occurrence) in a command line."""
    return [g for g in groups(flags) if g[0] == name][-1][1]


def groups(flags):
    """A fairseq-train command line as (flag, its values) pairs, in order."""
    out = []
    for f in flags:
        if f.startswith("--") or not out:
            out.append([f])
        else:
            out[-1].append(f)
    return out


def merged(base, extra, drop=()):
    """``base`` without the flags ``extra`` sets again and without ``drop``, then ``extra``: the
    command fairseq would read the same way (later flags win), written once."""
    gone = set(drop) | {g[0] for g in groups(extra)}
    return [f for g in groups(base) if g[0] not in gone for f in g] + list(extra)


DNI = ["--user-dir", USER_DIR]
STOCK_LM = ["--task", "language_modeling", "--sample-break-mode", "none", "--arch", "lstm_lm",
            "--tokens-per-sample", "35", "--optimizer", "adam", "--lr", "1e-3", "--clip-norm", "0.25"]
TINY_SIZES = ["--decoder-embed-dim", "16", "--decoder-hidden-size", "16"]


@dataclass
class Throughput:
    name: str
    corpus: str
    flags: List[str]                 # fairseq-train flags after the data folder: task, model, streams, optimizer
    arms: Dict[str, Arm]
    tiny: List[str] = field(default_factory=list)   # size overrides for --tiny
    # (warm-up = log interval, timed) updates at full size when this configuration's updates are long
    # (None: the check's --interval and --timed; those, when given, apply to every configuration)
    updates: Optional[Tuple[int, int]] = None


def paper_awd(corpus="ptb"):
    """The seed paper's full-size configuration (recipes/paper/: dni_awd_lstm_lm, 3 layers 1150/1150/400,
    tied 400-d embedding, weight drop, locked dropout, 20 streams x variable windows of about 200,
    --alpha 2 --beta 1, Adam 1e-3, clip 0.2): its bptt arm (lm_cross_entropy, TBPTT) and its DNI arms'
    criterion held in synthetic mode (the paper's first epoch is real: --real-first-epochs dropped), with
    the paper's coordinate-wise QRNN synthesizer and with a GRU cell instead."""
    common, bptt, dni = split_common(paper_flags(corpus, "bptt"), paper_flags(corpus, "dni"))
    synthetic = merged(dni, ["--dni-mode", "synthetic", "--mode-schedule", "synthetic"], drop=("--real-first-epochs",))
    return DNI + common, {
        "tbptt": Arm(bptt),
        "synthetic-qrnn": Arm(synthetic),
        "synthetic-gru": Arm(merged(synthetic, ["--dni-synthesizer-cell", "gru"])),
    }


THROUGHPUT = [
    Throughput("wt103-dni_lstm_lm_wikitext103", "wt103", DNI + recipe_flags("wikitext103"), dni_arms("adaptive_loss"),
               tiny=TINY_SIZES + ["--decoder-out-embed-dim", "8", "--adaptive-softmax-cutoff", "200,600"]),
    Throughput("ptb-dni_lstm_lm", "ptb", DNI + recipe_flags("ptb"), dni_arms("cross_entropy"), tiny=TINY_SIZES),
    Throughput("wt103-lstm_lm", "wt103", STOCK_LM + ["--batch-size", "32"],
               {"stock": Arm(["--criterion", "adaptive_loss", *LEGACY_DDP["adaptive_loss"]])},
               tiny=TINY_SIZES + ["--decoder-out-embed-dim", "16", "--adaptive-softmax-cutoff", "100,500,1500"]),
    Throughput("ptb-lstm_lm", "ptb", STOCK_LM + ["--batch-size", "20"], {"stock": Arm(["--criterion", "cross_entropy"])},
               tiny=TINY_SIZES + ["--decoder-out-embed-dim", "16"]),
    # the seed paper's full size (windows of 20 x about 200 tokens, so few updates); its run hours: PAPER_GRID
    Throughput("ptb-dni_awd_lstm_lm", "ptb", *paper_awd("ptb"), updates=(5, 30),
               # tiny: 16/16/8, tied 8; --variable-window needs windows of 10 or more
               tiny=["--decoder-embed-dim", "8", "--decoder-hidden-size", "16", "--tokens-per-sample", "10"]),
]


@dataclass
class PaperGrid:
    """What one run of the seed paper's grid costs at the measured rates (derived in the summary)."""
    config: str                   # the THROUGHPUT configuration measured
    arm_rates: Dict[str, str]     # the paper's arm -> the measured arm whose tokens/s it trains at
    epochs: int                   # training epochs of every arm (--max-epoch)
    epoch_tokens: Dict[str, int]  # corpus label -> training tokens per epoch (one </s> per line included)


# bptt trains at the TBPTT rate; every DNI arm (dni, dni-restart*, alternating-restart*) at the synthetic rate with
# the paper's QRNN synthesizer: dni_cross_entropy runs the synthesizer and its regression in real mode too (only the
# injection is skipped), so the alternating arms' real cycles are taken at the synthetic rate
PAPER_GRID = PaperGrid(
    "ptb-dni_awd_lstm_lm", {arm: "tbptt" if arm == "bptt" else "synthetic-qrnn" for arm in paper_arms()},
    epochs=int(flag_value(paper_flags("ptb", "bptt"), "--max-epoch")),
    epoch_tokens={CORPORA["ptb"].label: CORPORA["ptb"].epoch_tokens, "WikiText-2": recipe_train_tokens("wikitext2")})


@dataclass
class Precision:
    name: str
    tool: str                        # fairseq-train or fairseq-hydra-train
    flags: List[str]                 # the precision flags (hydra: overrides)
    eval_flags: List[str]            # fairseq-eval-lm's precision flags ([]: fp32)
    expect: str = "ok"               # "fail": a known limitation, recorded, not a failure of the check
    note: str = ""


PRECISION_RECIPE = ("wikitext103", "wt103")   # the recipe (and its Hydra twin) and its corpus
PRECISION = [
    Precision("fp16", "fairseq-train", ["--fp16", "--fp16-no-flatten-grads"], ["--fp16"]),
    Precision("bf16-hydra", "fairseq-hydra-train", ["common.bf16=true", "common.fp16_no_flatten_grads=true"], [],
              note="fairseq-hydra-train with recipes/config/wikitext103.yaml; eval-lm has no bf16, scores in fp32"),
    Precision("amp", "fairseq-train", ["--amp"], []),
    Precision("bf16", "fairseq-train", ["--bf16", "--fp16-no-flatten-grads"], [], expect="fail",
              note="fairseq's options.py turns --bf16 into --tpu, so stock fairseq-train --bf16 needs torch_xla "
                   "(facebookresearch/fairseq#4696); fairseq-hydra-train does not (bf16-hydra)"),
]
# jobs run in this order, most wanted first, so a run cut short by its time limit keeps the
# WikiText-103 model's numbers, the mixed-precision checks and the seed paper's configuration (its grid's cost)
ORDER = ["wt103-dni_lstm_lm_wikitext103", "precision", "ptb-dni_awd_lstm_lm", "ptb-dni_lstm_lm", "wt103-lstm_lm",
         "ptb-lstm_lm"]


@dataclass
class Sizes:
    """How long each run is, in updates (the first logged interval is warm-up, not timed)."""

    interval: int        # --log-interval; also the warm-up excluded from tokens/s
    timed: int           # timed updates (a multiple of interval)
    train_tokens: Dict[str, int]
    eval_tokens: int
    period: int          # precision runs: cosine cycle (updates); they run 2 cycles, one mode each
    period_interval: int  # precision runs: --log-interval (a divisor of period)


FULL = Sizes(interval=25, timed=200, train_tokens={"wt103": 640_000, "ptb": 400_000}, eval_tokens=20_000,
             period=30, period_interval=10)
TINY = Sizes(interval=2, timed=4, train_tokens={"wt103": 3_000, "ptb": 2_000}, eval_tokens=400,
             period=4, period_interval=2)
TINY_WINDOW = ["--batch-size", "4", "--tokens-per-sample", "7"]
TINY_PRECISION_HYDRA = ["model.decoder_embed_dim=16", "model.decoder_hidden_size=16", "model.decoder_out_embed_dim=8",
                        'model.adaptive_softmax_cutoff="200,600"', "dataset.batch_size=4", "task.tokens_per_sample=7"]

CSV_FIELDS = [
    "section", "config", "arm", "status", "expected", "tool", "corpus", "vocab", "sizes", "streams", "window",
    "tokens_per_s", "bare_tokens_per_s", "ratio_to_bare", "epoch_tokens", "epoch_hours",
    "peak_allocated_mib", "peak_reserved_mib", "max_rss_mib", "wall_s", "first_loss", "last_loss",
    "losses_finite", "dni_synthetic", "mode_switch_after_update", "dni_cos_max_abs", "loss_scale",
    "overflows", "dni_nonfinite", "eval_ppl", "note", "command",
]


# ==== corpora ===============================================================================

def write_corpus(folder, types, tokens_by_split, seed=0):
    """A binarized corpus as ``fairseq-preprocess --only-source`` leaves it, generated directly.

    ``types - 1`` words ``w0, w1, ...`` plus fairseq's own ``<unk>`` make ``types`` word types,
    so the dictionary has the real corpus' size (fairseq pads it to a multiple of 8: 267,744
    for WikiText-103, 10,008 for PTB). Words are drawn from a Zipf law (p ~ 1/rank) and ordered
    by frequency as fairseq orders them, so the adaptive softmax's clusters see a realistic
    share of the tokens; lines of 10-99 tokens, each ending in ``</s>``. Returns len(dictionary).
    """
    import numpy as np
    import torch
    from fairseq.data import Dictionary, indexed_dataset

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = types - 1
    p = 1.0 / np.arange(1, words + 1)
    p /= p.sum()
    d = Dictionary()
    for i, expected in enumerate(p * tokens_by_split["train"]):
        d.add_symbol(f"w{i}", n=max(1, int(expected)))
    d.pad_to_multiple_(8)
    d.save(os.path.join(folder, "dict.txt"))
    first = d.nspecial  # id of w0
    for split, n in tokens_by_split.items():
        ids = first + rng.choice(words, size=n, p=p)
        builder = indexed_dataset.make_builder(os.path.join(folder, f"{split}.bin"), impl="mmap", vocab_size=len(d))
        start = 0
        while start < n:
            length = int(rng.integers(10, 100))
            line = ids[start : start + length - 1]
            builder.add_item(torch.from_numpy(np.append(line, d.eos()).astype(np.int64)))
            start += length - 1
        builder.finalize(os.path.join(folder, f"{split}.idx"))
    return len(d)


def load_train_tokens(folder):
    from throughput import load_tokens
    return load_tokens(folder, "train")


# ==== the jobs =============================================================================

@dataclass
class Job:
    id: str
    kind: str                        # env, bare, train, eval
    section: str                     # environment, throughput, precision
    config: str = ""
    arm: str = ""
    corpus: str = ""
    tool: str = ""
    argv: List[str] = field(default_factory=list)
    expect: str = "ok"
    note: str = ""
    bare: Optional[dict] = None      # kind bare: sizes and loop settings
    checks: dict = field(default_factory=dict)


def parsed(flags, data):
    """fairseq's own reading of a fairseq-train command line: its model config (every default
    applied, as training sees it) and its argument namespace."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    args = options.parse_args_and_arch(options.get_training_parser(), [data, *flags])
    return convert_namespace_to_omegaconf(args).model, args


def bare_spec(model, args, vocab):
    """The bare loop of the same sizes, dropouts and optimizer as a parsed fairseq-train command."""
    def rate(name):
        value = getattr(model, name, None)
        return model.dropout if value is None else value

    dni = args.arch.startswith("dni_")
    cutoff = getattr(model, "adaptive_softmax_cutoff", None)
    adaptive = cutoff and (dni or args.criterion == "adaptive_loss")   # lstm_lm uses it with adaptive_loss only
    optimizer = args.base_optimizer if args.optimizer == "alternating" else args.optimizer
    if optimizer not in ("adam", "sgd"):
        raise SystemExit(f"gpu_check: the bare loop has adam and sgd, not {optimizer}")
    # the layers' widths as the model builds them (dni_lstm_lm.DNILSTMDecoder): AWD-LSTM's last layer
    # (--decoder-last-layer-out-dim) is as wide as the output layer's input, the embedding's when tied
    tied = bool(getattr(model, "share_decoder_input_output_embed", False)) and not adaptive
    embed, hidden, layers = model.decoder_embed_dim, model.decoder_hidden_size, model.decoder_layers
    out = model.decoder_out_embed_dim or (embed if tied else None)
    widths = [hidden] * layers
    if getattr(model, "decoder_last_layer_out_dim", False):
        widths[-1] = out or hidden
    return {
        "sizes": {"vocab": vocab, "embed": embed, "hidden": hidden, "layers": layers, "out": out,
                  "widths": widths if len(set(widths)) > 1 else None, "tied": tied,
                  "cutoffs": [int(c) for c in str(cutoff).split(",")] if adaptive else None,
                  "adaptive_factor": getattr(model, "adaptive_softmax_factor", 4.0),
                  "dropout_in": rate("decoder_dropout_in"),
                  "dropout_hidden": rate("decoder_hidden_dropout") if dni else 0.0,
                  "dropout_out": rate("decoder_dropout_out")},
        "batch_size": args.batch_size, "window": args.tokens_per_sample, "optimizer": optimizer,
        "lr": args.lr[0], "clip": args.clip_norm,
    }


def size_label(s):
    widths = s.get("widths") or [s["hidden"]] * s["layers"]
    text = f"{s['layers']}x{s['hidden']}" if len(set(widths)) == 1 else "/".join(map(str, widths))
    text += f", embed {s['embed']}"
    if s["out"] and s["out"] != widths[-1]:
        text += f", out {s['out']}"
    if s.get("tied"):
        text += ", tied"
    text += f", adaptive {','.join(map(str, s['cutoffs']))}" if s["cutoffs"] else ", full softmax"
    return text


def plan(opts, data_dirs, vocabs):
    sizes = opts.sizes
    device = ["--cpu", "--num-workers", "0"] if opts.cpu else []
    log = ["--log-format", "json", "--no-progress-bar", "--seed", "1"]
    groups = {}
    for cfg in THROUGHPUT:
        data = data_dirs[cfg.corpus]
        jobs = []
        base = merged(merged(cfg.flags, TINY_WINDOW), cfg.tiny) if opts.tiny else cfg.flags   # cfg.tiny wins
        interval, timed = cfg.updates if cfg.updates and not (opts.tiny or opts.updates_given) else \
            (sizes.interval, sizes.timed)
        total = interval + timed
        first = None
        for arm_name, arm in cfg.arms.items():
            job_id = f"{cfg.name}.{arm_name}"
            # a throughput run is a slice of the recipe: its cosine cycle must fit in it (cosine_alternating refuses
            # a first cycle longer than the run); the rate's shape does not change the tokens/s
            period = (["--lr-period-updates", str(total), "--warmup-updates", "0"]
                      if "--lr-period-updates" in base else [])
            flags = merged(base, arm.flags + period + [
                "--max-update", str(total), "--disable-validation", "--no-save",
                "--save-dir", os.path.join(opts.work, "checkpoints", job_id), "--log-interval", str(interval)]
                + log + device, drop=arm.drop)
            if first is None:
                first = parsed(flags, data)
                spec = bare_spec(*first, vocabs[cfg.corpus])
                spec.update(data=data, warmup=interval, updates=timed,
                            device="cpu" if opts.cpu else "cuda")
                jobs.append(Job(f"{cfg.name}.bare", "bare", "throughput", cfg.name, "bare", cfg.corpus,
                                tool="bare PyTorch nn.LSTM loop", bare=spec))
            jobs.append(Job(job_id, "train", "throughput", cfg.name, arm_name, cfg.corpus, "fairseq-train",
                            [data, *flags], checks={"mode": arm_name, "interval": interval, "timed": timed}))
        groups[cfg.name] = jobs

    recipe, corpus = PRECISION_RECIPE
    data = data_dirs[corpus]
    jobs = []
    for p in PRECISION:
        job_id = f"precision.{p.name}"
        save = os.path.join(opts.work, "checkpoints", job_id)
        if p.tool == "fairseq-hydra-train":
            argv = ["--config-dir", os.path.join(REPO, "recipes", "config"), "--config-name", recipe,
                    f"task.data={data}", f"common.user_dir={USER_DIR}", f"checkpoint.save_dir={save}",
                    f"hydra.run.dir={os.path.join(opts.work, 'hydra', job_id)}",
                    f"optimization.max_update={2 * sizes.period}", f"lr_scheduler.lr_period_updates={sizes.period}",
                    "lr_scheduler.t_mult=1", "lr_scheduler.warmup_updates=0", f"common.log_interval={sizes.period_interval}",
                    "checkpoint.no_save_optimizer_state=true", "dataset.disable_validation=true"] + p.flags
            if opts.tiny:
                argv += TINY_PRECISION_HYDRA
            if opts.cpu:
                argv += ["common.cpu=true", "dataset.num_workers=0"]
        else:
            cfg_tiny = THROUGHPUT[0].tiny + TINY_WINDOW if opts.tiny else []
            argv = [data, *merged(DNI + recipe_flags(recipe), cfg_tiny + [
                "--max-update", str(2 * sizes.period), "--lr-period-updates", str(sizes.period),
                "--t-mult", "1", "--warmup-updates", "0", "--save-dir", save, "--no-save-optimizer-state",
                "--disable-validation", "--log-interval", str(sizes.period_interval), *log, *device, *p.flags])]
        jobs.append(Job(job_id, "train", "precision", "precision", p.name, corpus, p.tool, argv, expect=p.expect,
                        note=p.note, checks={"period": sizes.period}))
        if p.expect == "ok":
            window = "7" if opts.tiny else "35"
            jobs.append(Job(f"{job_id}.eval", "eval", "precision", "precision", f"{p.name} eval-lm", corpus,
                            "fairseq-eval-lm",
                            [data, "--path", os.path.join(save, "checkpoint_last.pt"), "--user-dir", USER_DIR,
                             "--task", "dni_language_modeling", "--gen-subset", "test", "--batch-size", "10",
                             "--tokens-per-sample", window, *device, *p.eval_flags],
                            checks={"after": job_id}))
    groups["precision"] = jobs
    if opts.only:
        unknown = set(opts.only) - set(groups)
        if unknown:
            raise SystemExit(f"gpu_check: --only {','.join(sorted(unknown))}: not one of {', '.join(ORDER)}")
        groups = {name: jobs for name, jobs in groups.items() if name in opts.only}
    missing = set(groups) - set(ORDER)
    if missing:
        raise SystemExit(f"gpu_check: add {sorted(missing)} to ORDER")
    return [Job("environment", "env", "environment", tool="python")] + [j for name in ORDER if name in groups
                                                                          for j in groups[name]]


# ==== children =============================================================================

TOOLS = {
    "fairseq-train": "fairseq_cli.train",
    "fairseq-eval-lm": "fairseq_cli.eval_lm",
    "fairseq-hydra-train": "fairseq_cli.hydra_train",
}


def environment():
    """What ran: interpreter, torch, CUDA, the GPU, fairseq, and a digest of the code."""
    import numpy
    import torch
    import fairseq

    info = {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "torch_path": os.path.dirname(torch.__file__),
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "numpy": numpy.__version__,
        "fairseq": getattr(fairseq, "__version__", "?"), "fairseq_path": os.path.dirname(fairseq.__file__),
        "threads": torch.get_num_threads(), "commit": os.environ.get("DNI_COMMIT", "unknown"),
        "code_sha1": code_digest(), "install_s": os.environ.get("DNI_INSTALL_S", ""),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        torch.ones(1, device="cuda").sum().item()   # a forked child must be able to use CUDA
        info.update(gpu=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_mib=props.total_memory // 2**20, gpu_count=torch.cuda.device_count())
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    else:
        info["gpu"] = "none (CPU run)"
    return info


def code_digest():
    """sha1 over the plugin's and the benchmarks' Python files: names the code that ran without git."""
    h = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(USER_DIR, "**", "*.py"), recursive=True)
                       + glob.glob(os.path.join(HERE, "*.py")) + glob.glob(os.path.join(HERE, "*.sh"))):
        h.update(os.path.relpath(path, REPO).encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha1(f.read()).digest())
    return h.hexdigest()[:12]


def run_job(job: Job) -> dict:
    """The job itself, in the child; returns what goes into its stats besides memory and time."""
    if job.kind == "env":
        return {"environment": environment()}
    if job.kind == "bare":
        from bare_lstm import BareSizes, tbptt_tokens_per_s
        b = job.bare
        if b["device"] == "cpu":
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        tokens_per_s, loss = tbptt_tokens_per_s(
            load_train_tokens(b["data"]), BareSizes(**b["sizes"]), b["batch_size"], b["window"],
            optimizer=b["optimizer"], lr=b["lr"], clip=b["clip"], warmup=b["warmup"], updates=b["updates"],
            device=b["device"])
        print(f"bare loop: {tokens_per_s:.1f} tokens/s, last loss {loss:.4f} nats", flush=True)
        return {"tokens_per_s": tokens_per_s, "last_loss": loss}
    module = __import__(TOOLS[job.tool], fromlist=["cli_main"])
    sys.argv = [job.tool, *job.argv]
    print("+ " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    module.cli_main()
    return {}


def child_main(job: Job, stats_path: str) -> int:
    t0 = time.time()
    stats, code = {"ok": False}, 1
    try:
        stats.update(run_job(job))
        stats["ok"], code = True, 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        stats["ok"] = code == 0
        if code:
            stats["error"] = f"exit {e.code}"
    except BaseException as e:  # noqa: B902 - everything a run can raise ends up in the row
        traceback.print_exc()
        stats["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    stats["wall_s"] = time.time() - t0
    try:
        import resource
        stats["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        import torch
        if torch.cuda.is_initialized():
            stats["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            stats["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    except Exception as e:  # noqa: BLE001
        stats["stats_error"] = str(e)
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    return code


class Runner:
    """Starts each job as a child (forked, or spawned) and waits for it with a time limit."""

    def __init__(self, work, spawn):
        self.work, self.spawn = work, spawn
        os.makedirs(os.path.join(work, "logs"), exist_ok=True)

    def paths(self, job):
        base = os.path.join(self.work, "logs", job.id)
        return base + ".log", base + ".stats.json"

    def run(self, job, timeout):
        log, stats = self.paths(job)
        for p in (log, stats):
            if os.path.exists(p):
                os.remove(p)
        if self.spawn:
            spec = os.path.join(self.work, "logs", job.id + ".job.json")
            with open(spec, "w") as f:
                json.dump(job.__dict__, f)
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", spec, stats],
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
            pid = proc.pid
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: its own process group, output to its log
                code = 1
                try:
                    os.setpgid(0, 0)
                    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.chdir(REPO)
                    code = child_main(job, stats)
                finally:
                    os._exit(code)
        timed_out = not self.wait(pid, timeout)
        try:
            with open(stats) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = {"ok": False, "error": "no stats (killed?)"}
        if timed_out:
            result.update(ok=False, error=f"timeout after {timeout:.0f} s", timeout=True)
        with open(log, errors="replace") as f:
            result["log"] = f.read()
        return result

    @staticmethod
    def wait(pid, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
            time.sleep(0.1)
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            end = time.time() + grace
            while time.time() < end:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return False
                time.sleep(0.1)
        return False


# ==== reading the logs ======================================================================

def train_records(log):
    """fairseq's per-interval json records (fairseq-train's and fairseq-hydra-train's format)."""
    out = []
    for m in re.finditer(r"train_inner[^{]*(\{.*\})", log):
        try:
            out.append(json.loads(m.group(1)))
        except ValueError:
            pass
    return out


def number(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def finite(*xs):
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def fill_train(row, job, records, sizes, log):
    """Tokens/s, losses and the DNI columns of a fairseq-train row; returns the check failures."""
    from throughput import measured_tokens_per_s

    problems = []
    if not records:
        return ["no train_inner records in the log"]
    losses = [number(r.get("loss")) for r in records]
    row.update(first_loss=losses[0], last_loss=losses[-1], losses_finite=all(map(math.isfinite, losses)))
    if not row["losses_finite"]:
        problems.append("non-finite loss")
    modes = [number(r["dni_synthetic"]) for r in records if "dni_synthetic" in r]
    if modes:
        row["dni_synthetic"] = ",".join(f"{m:g}" for m in modes)
    if job.section == "throughput":
        interval = job.checks.get("interval", sizes.interval)
        rate = measured_tokens_per_s(records, interval, interval)
        row["tokens_per_s"] = rate
        if not (finite(rate) and rate > 0):
            problems.append("no tokens/s")
        want = arm_mode(job.checks.get("mode", ""))
        if want is not None and set(modes) != {want}:
            problems.append(f"dni_synthetic {sorted(set(modes))}, expected only {want:g}")
        return problems
    # precision: the mode switch, the synthesizer's cosine, the loss scale
    period = job.checks["period"]
    ups = [int(r["num_updates"]) for r in records if "dni_synthetic" in r]
    switch = [ups[i] for i in range(len(modes) - 1) if modes[i] != modes[i + 1]]
    row["mode_switch_after_update"] = ",".join(map(str, switch))
    if switch != [period] or modes[0] != 1.0:
        problems.append(f"mode switch after {switch or 'no update'}, expected synthetic then real after update {period}")
    cos = [abs(number(r["dni_cos"])) for r in records if "dni_cos" in r]
    row["dni_cos_max_abs"] = max(cos) if cos else float("nan")
    if not (cos and finite(*cos) and max(cos) > 0):
        problems.append("dni_cos missing, zero or non-finite")
    # fp16 / amp: updates skipped on gradient overflow (fairseq's DynamicLossScaler / AMP retries) and
    # windows whose synthetic gradient or target was non-finite (replaced by a real update)
    row["overflows"] = len(re.findall(r"gradient overflow detected|AMP: skipping this batch", log))
    row["dni_nonfinite"] = sum(number(r.get("dni_nonfinite", 0)) for r in records)
    scales = [r["loss_scale"] for r in records if "loss_scale" in r]
    row["loss_scale"] = f"{scales[0]} -> {scales[-1]}" if scales else "not logged"
    if any(f in job.argv for f in ("--fp16", "--amp")) and not scales:
        problems.append("loss scale not logged")
    return problems


def arm_mode(arm):
    """dni_synthetic every interval of a throughput arm must log: 0 (real), 1 (synthetic...), None (no DNI)."""
    return 0.0 if arm == "real" else (1.0 if arm.startswith("synthetic") else None)


def perplexity(log):
    m = re.findall(r"Perplexity: ([0-9.eE+-]+|inf|nan)", log)
    return number(m[-1]) if m else float("nan")


# ==== results ===============================================================================

class Results:
    FILES = ("gpu_check.csv", "gpu_check.md", "environment.json", "runs.log", "install.log")

    def __init__(self, opts, jobs):
        self.opts, self.jobs = opts, jobs
        self.rows = {j.id: self.blank(j) for j in jobs if j.kind != "env"}
        self.env, self.started = {}, time.time()
        os.makedirs(opts.results, exist_ok=True)
        for name in self.FILES[:4]:
            path = os.path.join(opts.results, name)
            if os.path.exists(path):
                os.remove(path)

    @staticmethod
    def blank(job):
        row = {k: "" for k in CSV_FIELDS}
        row.update(section=job.section, config=job.config, arm=job.arm, status="pending", expected=job.expect,
                   tool=job.tool, corpus=job.corpus, note=job.note,
                   command=" ".join(shlex.quote(a) for a in [job.tool, *job.argv]) if job.kind != "bare" else "")
        if job.bare:
            s = job.bare["sizes"]
            row.update(vocab=s["vocab"], sizes=size_label(s), streams=job.bare["batch_size"], window=job.bare["window"])
        return row

    def record(self, job, result, sizes):
        if job.kind == "env":
            self.env = result.get("environment", {"error": result.get("error", "?")})
            return
        row = self.rows[job.id]
        for k in ("peak_allocated_mib", "peak_reserved_mib", "max_rss_mib", "wall_s"):
            if k in result:
                row[k] = result[k]
        problems = [] if result.get("ok") else [result.get("error", "failed")]
        if job.kind == "bare" and result.get("ok"):
            row.update(tokens_per_s=result["tokens_per_s"], last_loss=result["last_loss"])
            if not finite(result["tokens_per_s"], result["last_loss"]):
                problems.append("non-finite tokens/s or loss")
        elif job.kind == "train" and result.get("ok"):
            problems += fill_train(row, job, train_records(result["log"]), self.opts.sizes, result["log"])
        elif job.kind == "eval" and result.get("ok"):
            row["eval_ppl"] = perplexity(result["log"])
            self.rows[job.checks["after"]]["eval_ppl"] = row["eval_ppl"]
            if not finite(row["eval_ppl"]):
                problems.append("no finite perplexity")
        if job.expect == "fail" and not result.get("ok"):
            row["status"] = "failed, as expected"
            row["note"] = (row["note"] + f"; error: {result.get('error', '')}").strip("; ")
        elif job.expect == "fail" and not problems:
            row["status"] = "ok, though expected to fail: the note is out of date"
        else:
            row["status"] = "ok" if not problems else "FAILED: " + "; ".join(problems)
        self.derive()

    def derive(self):
        """Ratios to the bare loop of the same configuration and projected epochs."""
        for job in self.jobs:
            if job.kind == "bare":
                bare_row = self.rows[job.id]
                for other in self.jobs:
                    row = self.rows.get(other.id)
                    if other.config != job.config or row is None or other.kind == "env":
                        continue
                    for k in ("vocab", "sizes", "streams", "window"):
                        row[k] = bare_row[k]
                    row["bare_tokens_per_s"] = bare_row["tokens_per_s"]
                    if finite(row["tokens_per_s"]) and finite(bare_row["tokens_per_s"]) and other.kind == "train":
                        row["ratio_to_bare"] = row["tokens_per_s"] / bare_row["tokens_per_s"]
            row = self.rows.get(job.id)
            if row is not None and job.section == "throughput" and finite(row["tokens_per_s"]):
                tokens = CORPORA[job.corpus].epoch_tokens
                row.update(epoch_tokens=tokens, epoch_hours=tokens / row["tokens_per_s"] / 3600)

    def skip_rest(self, reason):
        for row in self.rows.values():
            if row["status"] == "pending":
                row["status"] = f"skipped: {reason}"

    def ok(self):
        return all(r["status"].startswith(("ok", "failed, as expected")) for r in self.rows.values())

    # ---- writing ----
    def write(self, runs_log_append=None):
        d = self.opts.results
        with open(os.path.join(d, "gpu_check.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for row in self.rows.values():
                w.writerow({k: fmt_csv(v) for k, v in row.items()})
        with open(os.path.join(d, "environment.json"), "w") as f:
            json.dump(self.env, f, indent=1, sort_keys=True)
        with open(os.path.join(d, "gpu_check.md"), "w") as f:
            f.write(self.markdown())
        if runs_log_append:
            with open(os.path.join(d, "runs.log"), "a") as f:
                f.write(runs_log_append)
        if self.opts.out:
            os.makedirs(self.opts.out, exist_ok=True)
            for name in self.FILES:
                src = os.path.join(d, name)
                if os.path.exists(src) and os.path.abspath(self.opts.out) != os.path.abspath(d):
                    shutil.copy(src, os.path.join(self.opts.out, name))

    def paper_grid_lines(self):
        """GPU-hours of one run of each of the seed paper's arms (and of the whole grid) at the measured rates."""
        g = PAPER_GRID
        if not any(j.config == g.config for j in self.jobs):
            return []
        rates = {r["arm"]: r["tokens_per_s"] for r in self.rows.values()
                 if r["section"] == "throughput" and r["config"] == g.config and r["arm"] != "bare"}
        corpora = list(g.epoch_tokens)

        def hours(rate, corpus):
            return g.epochs * g.epoch_tokens[corpus] / rate / 3600 if finite(rate) and rate > 0 else float("nan")

        lines = [
            "## The seed paper's grid at these rates (derived)", "",
            f"One run = {g.epochs} epochs (the paper's --max-epoch) of the training split: "
            + ", ".join(f"{c} {g.epoch_tokens[c]:,} tokens/epoch" for c in corpora)
            + f", at the tokens/s of `{g.config}` above, on this one device; validation and test scoring not "
            "counted. GPU-hours of one run per measured arm:", "",
            "| measured arm | tokens/s | " + " | ".join(f"{c} run, GPU-h" for c in corpora) + " |",
            "|---|---|" + "---|" * len(corpora),
        ]
        for arm, rate in rates.items():
            lines.append(f"| {arm} | {fmt(rate, ',.0f')} | " + " | ".join(fmt(hours(rate, c), ',.2f') for c in corpora)
                         + " |")
        total = {c: sum(hours(rates.get(m, float("nan")), c) for m in g.arm_rates.values()) for c in corpora}
        by_rate = {}
        for arm, measured in g.arm_rates.items():
            by_rate.setdefault(measured, []).append(arm)
        lines += ["", f"The paper's grid ({len(g.arm_rates)} arms x {len(corpora)} corpora, one seed each): "
                  + "; ".join(f"{', '.join(arms)} at the {m} rate" for m, arms in by_rate.items())
                  + " (dni_cross_entropy runs its synthesizer and regression in real mode too, so the alternating "
                  "arms' real cycles are taken at the synthetic rate): **"
                  + fmt(sum(total.values()), ",.1f") + " GPU-hours** ("
                  + ", ".join(f"{c} {fmt(total[c], ',.1f')}" for c in corpora) + ")."]
        return lines

    def markdown(self):
        o, e = self.opts, self.env
        mode = "CPU, tiny sizes (a rehearsal: these numbers measure nothing)" if o.cpu and o.tiny else \
            ("CPU" if o.cpu else "GPU") + (", tiny sizes" if o.tiny else ", real sizes")
        lines = [
            "# GPU check (`bash benchmarks/gpu_check.sh`)", "",
            f"Mode: {mode}. Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
            f"{time.time() - self.started:.0f} s after the measurements began"
            + (f" (install and build before that: {e['install_s']} s)" if e.get("install_s") else "") + ".", "",
            f"Environment: GPU {e.get('gpu', '?')}" + (f" ({e['nvidia_smi']})" if e.get("nvidia_smi") else "")
            + f"; torch {e.get('torch', '?')}, CUDA {e.get('torch_cuda', '-')}, cuDNN {e.get('cudnn', '-')}; "
            f"Python {e.get('python', '?')}; fairseq {e.get('fairseq', '?')}; {e.get('cpus', '?')} CPUs "
            f"({e.get('cpu_model', '?')}); commit {e.get('commit', '?')}, code sha1 {e.get('code_sha1', '?')} "
            "(all in environment.json).", "",
            "## Throughput", "",
            "Stock `fairseq-train` on a generated corpus with the real vocabulary size, "
            f"{o.sizes.timed} updates timed after {o.sizes.interval} of warm-up (fairseq's `wps`), each against "
            "the bare PyTorch `nn.LSTM` loop of the same sizes, dropouts and optimizer (`benchmarks/bare_lstm.py`) "
            "run just before it. Epoch: the real training split (WikiText-103 103,227,021 tokens, PTB 929,589, "
            "one `</s>` per line included) at that rate on this one device. Memory: peak of torch's CUDA "
            "allocator, allocated / reserved.", "",
            "| configuration | arm | sizes | streams x window | tokens/s | bare loop tokens/s | / bare | epoch | "
            "peak MiB | status |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for job in self.jobs:
            r = self.rows.get(job.id)
            if r is None or job.section != "throughput":
                continue
            epoch = ""
            if finite(r["epoch_hours"]):
                epoch = f"{CORPORA[job.corpus].label} " + (f"{r['epoch_hours']:.2f} h" if r["epoch_hours"] >= 1
                                                           else f"{r['epoch_hours'] * 60:.1f} min")
            lines.append(f"| {r['config']} | {r['arm']} | {r['sizes']} | {r['streams']} x {r['window']} | "
                         f"{fmt(r['tokens_per_s'], ',.0f')} | {fmt(r['bare_tokens_per_s'], ',.0f')} | "
                         f"{fmt(r['ratio_to_bare'], '.2f')} | {epoch} | {mem(r)} | {r['status']} |")
        short = [f"{c.name} {c.updates[1]} after {c.updates[0]}" for c in THROUGHPUT
                 if c.updates and not (o.tiny or o.updates_given)]
        if short:
            lines += ["", "Timed updates after warm-up, where a configuration's updates are long: "
                      + "; ".join(short) + "."]
        lines += [""] + self.paper_grid_lines()
        lines += [
            "", "## Mixed precision", "",
            f"The WikiText-103 alternating recipe (`recipes/wikitext103.sh`, its Hydra twin for bf16) for "
            f"{2 * o.sizes.period} updates in two cosine cycles of {o.sizes.period} (synthetic, then real), then "
            "`fairseq-eval-lm` on its checkpoint (test split). Checked: every logged loss finite, the switch "
            f"after update {o.sizes.period}, a non-zero `dni_cos`, the loss scale logged (fp16, amp), a finite "
            "perplexity.", "",
            "| run | tool | status | losses (first -> last) | dni_synthetic per interval | switch after | "
            "max abs dni_cos | loss scale | overflows | dni_nonfinite | eval-lm ppl | peak MiB (train) | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for job in self.jobs:
            r = self.rows.get(job.id)
            if r is None or job.section != "precision" or job.kind != "train":
                continue
            lines.append(f"| {r['arm']} | {r['tool']} | {r['status']} | {fmt(r['first_loss'], '.3f')} -> "
                         f"{fmt(r['last_loss'], '.3f')} | {r['dni_synthetic']} | {r['mode_switch_after_update']} | "
                         f"{fmt(r['dni_cos_max_abs'], '.4f')} | {r['loss_scale']} | {r['overflows']} | "
                         f"{fmt(r['dni_nonfinite'], '.0f')} | {fmt(r['eval_ppl'], ',.1f')} | "
                         f"{mem(r)} | {r['note']} |")
        evals = [self.rows[j.id] for j in self.jobs if j.kind == "eval"]
        lines += ["", "eval-lm runs: " + "; ".join(f"{r['arm']}: {r['status']}" + (f", {mem(r)} MiB" if mem(r) else "")
                                             for r in evals) + "."]
        if o.cpu:
            lines += ["", "On the CPU: `--fp16` runs (fairseq's FP16Optimizer and loss scaler work on the CPU with "
                      "torch's half kernels); `--amp` trains in fp32 there (torch.cuda.amp's autocast and "
                      "GradScaler are disabled without CUDA, so its loss scale stays 1); bf16 runs through "
                      "fairseq-hydra-train; peak GPU memory is empty and max RSS is in the CSV."]
        lines += ["", "## Commands", ""]
        lines += [f"* `{r['command']}`" for r in self.rows.values() if r["command"]]
        lines += ["", "Bare loops: `benchmarks/bare_lstm.py` with the sizes in the table (read from fairseq's own "
                  "parse of the first arm's command).", ""]
        return "\n".join(lines)


def fmt(x, spec):
    """A number as ``spec``; inf and nan as such; "" for a value not measured."""
    if isinstance(x, (int, float)):
        return format(x, spec) if math.isfinite(x) else str(x)
    return ""


def mem(r):
    if finite(r["peak_allocated_mib"]):
        return f"{r['peak_allocated_mib']:,.0f} / {r['peak_reserved_mib']:,.0f}"
    return ""


def fmt_csv(v):
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return v


# ==== main ==================================================================================

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU needed)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the whole check in about a minute")
    parser.add_argument("--work", required=True, help="scratch folder (corpora, checkpoints, logs); emptied first")
    parser.add_argument("--results", required=True, help="folder for gpu_check.{csv,md}, environment.json, runs.log")
    parser.add_argument("--out", default="", help="also copy the results here after every run")
    parser.add_argument("--deadline", type=float, default=0, help="epoch seconds: start no run that would end later")
    parser.add_argument("--spawn", action="store_true", help="start every run as a fresh process (no fork)")
    parser.add_argument("--list", action="store_true", help="print the runs and their commands, run nothing")
    parser.add_argument("--interval", type=int, help="throughput runs: log interval = warm-up updates (default 25, tiny 2)")
    parser.add_argument("--timed", type=int, help="throughput runs: timed updates, a multiple of --interval (200, tiny 4)")
    parser.add_argument("--period", type=int, help="precision runs: updates per cosine cycle (30, tiny 4)")
    parser.add_argument("--only", type=lambda v: v.split(","), default=None,
                        help="comma-separated configurations (names in ORDER, e.g. ptb-dni_awd_lstm_lm or precision) "
                             "to run, the others left out (to try one configuration at its real sizes on the CPU)")
    opts = parser.parse_args()
    opts.sizes = dataclasses.replace(TINY if opts.tiny else FULL)
    opts.updates_given = bool(opts.interval or opts.timed)
    for name in ("interval", "timed", "period"):
        if getattr(opts, name):
            setattr(opts.sizes, name, getattr(opts, name))
    if opts.period:
        opts.sizes.period_interval = opts.period
    if opts.sizes.timed % opts.sizes.interval:
        parser.error("--timed must be a multiple of --interval (fairseq logs every --interval updates)")
    if not opts.cpu:
        # fairseq reads torch.cuda.device_count() at import; NVML answers it without a CUDA context,
        # which forked children could not share
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    if opts.cpu and opts.tiny:
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    import_fairseq()

    for sub in ("checkpoints", "hydra", "logs"):
        shutil.rmtree(os.path.join(opts.work, sub), ignore_errors=True)
    data_dirs, vocabs = {}, {}
    t0 = time.time()
    for name, corpus in CORPORA.items():
        data_dirs[name] = os.path.join(opts.work, "data", name + ("-tiny" if opts.tiny else ""))
        tokens = opts.sizes.train_tokens[name]
        if opts.list:
            vocabs[name] = corpus.tiny_types if opts.tiny else corpus.types
            continue
        vocabs[name] = write_corpus(data_dirs[name], corpus.tiny_types if opts.tiny else corpus.types,
                                    {"train": tokens, "valid": opts.sizes.eval_tokens, "test": opts.sizes.eval_tokens})
    jobs = plan(opts, data_dirs, vocabs)
    if opts.list:
        for job in jobs:
            print(f"{job.id}: " + (json.dumps(job.bare) if job.bare else " ".join(shlex.quote(a) for a in [job.tool, *job.argv])))
        return 0
    print(f"[gpu_check] corpora written in {time.time() - t0:.1f} s: "
          + ", ".join(f"{n} ({vocabs[n]:,} types)" for n in CORPORA), flush=True)

    results = Results(opts, jobs)
    runner = Runner(opts.work, opts.spawn)
    # seconds a run of each kind is expected to take until one has been timed
    expected_s = {"env": 15, "bare": 15, "train": 30, "eval": 20}
    took: Dict[str, List[float]] = {}
    stopped = "time budget"
    try:
        for job in jobs:
            now = time.time()
            row = results.rows.get(job.id)
            if job.kind == "eval" and not results.rows[job.checks["after"]]["status"].startswith("ok"):
                row["status"] = "skipped: no checkpoint (its training run did not pass)"
                continue
            guess = max(took.get(job.kind, [expected_s[job.kind]]))
            if job.kind == "bare":  # worth its time only if an arm of its configuration runs after it
                guess += max(took.get("train", [expected_s["train"]]))
            if job.kind != "env" and opts.deadline and now + guess > opts.deadline:
                print(f"[gpu_check] {job.id}: skipped, {opts.deadline - now:.0f} s left, it needs about {guess:.0f}",
                      flush=True)
                row["status"] = "skipped: time budget"
                continue
            limit = 60 if job.kind == "env" else (600 if opts.cpu else 150)
            if opts.deadline:
                limit = min(limit, max(10, opts.deadline - now))
            print(f"[gpu_check] {job.id} ...", flush=True)
            result = runner.run(job, limit)
            if job.kind == "env" and not result.get("ok") and not runner.spawn:
                print("[gpu_check] a forked child could not start; from here on every run is a fresh process",
                      flush=True)
                runner.spawn = True
                result = runner.run(job, limit)
            took.setdefault(job.kind, []).append(result.get("wall_s", time.time() - now))
            results.record(job, result, opts.sizes)
            status = row["status"] if row else ("ok" if result.get("ok") else result.get("error"))
            print(f"[gpu_check] {job.id}: {status} ({time.time() - now:.1f} s)", flush=True)
            results.write(f"\n===== {job.id} ({time.time() - now:.1f} s) =====\n{result['log']}")
    except BaseException as e:  # noqa: B902 - whatever stops the check, what it measured is written
        stopped = f"not reached: the check stopped ({type(e).__name__}: {e})"
        raise
    finally:
        results.skip_rest(stopped)
        results.write()
        print("\n".join("[gpu_check] " + line for line in results.paper_grid_lines() if line), flush=True)
        print(f"[gpu_check] results in {opts.results}" + (f" and {opts.out}" if opts.out else ""), flush=True)
    return 0 if results.ok() else 1


def import_fairseq():
    """fairseq's three console scripts and the plugin, imported once, logging as fairseq-train logs."""
    # fairseq_cli/train.py's format; set first, or the first module to log at import sets the default one
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        level=os.environ.get("LOGLEVEL", "INFO").upper(), stream=sys.stdout)
    import fairseq.utils
    for module in TOOLS.values():
        __import__(module)
    fairseq.utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))


def child_entry(job_path, stats_path):
    with open(job_path) as f:
        job = Job(**json.load(f))
    import_fairseq()
    return child_main(job, stats_path)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(child_entry(sys.argv[2], sys.argv[3]))
    sys.exit(main())
