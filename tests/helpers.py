"""Helpers the test files share: fairseq's console scripts run as a user would, tiny corpora made at
run time, multi-rank launches, checkpoint comparison, the committed-report check. The fixtures that
use them are in conftest.py."""
import json
import os
import random
import re
import socket
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "fairseq_dni")
BIN = os.path.dirname(sys.executable)  # fairseq's console scripts live next to this python


def fairseq(tool, *args, cwd=None, env=None, check=True, timeout=600):
    """Run a stock fairseq console script; return its combined output."""
    cmd = [os.path.join(BIN, tool), *map(str, args)]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc.stdout


def train_inner(out):
    """The per-interval training records of a fairseq json log, in order."""
    return [json.loads(m) for m in re.findall(r"\| train_inner \| (\{.*\})", out)]


def assert_same_weights(path_a, path_b, parts=("model",), rtol=0.0, atol=0.0):
    """Every tensor of ``parts`` in two checkpoints agrees (bitwise by default)."""
    a = torch.load(path_a, map_location="cpu", weights_only=True)
    b = torch.load(path_b, map_location="cpu", weights_only=True)
    for part in parts:
        for name, value in a[part].items():
            if torch.is_tensor(value):
                torch.testing.assert_close(b[part][name], value, rtol=rtol, atol=atol, msg=f"{part}.{name}")


def committed_tables_match(out, committed, page):
    """The report just written into ``out`` from the committed logs has the committed CSV and tables, and
    every table line stands in ``page`` (docs/RESULTS.md)."""
    for name in ("results.csv", "table.md"):
        assert (out / name).read_text() == (committed / name).read_text(), f"{committed / name} is stale"
    text = page.read_text()
    for line in (out / "table.md").read_text().splitlines():
        assert line.lstrip("#").strip() in text, line


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_commands(args, world=2):
    """The fairseq-train command of each of ``world`` gloo ranks on this machine."""
    port = free_port()
    common = [*map(str, args), "--distributed-world-size", str(world), "--distributed-backend", "gloo",
              "--ddp-backend", "legacy_ddp", "--distributed-no-spawn",
              "--distributed-init-method", f"tcp://127.0.0.1:{port}"]
    return [[os.path.join(BIN, "fairseq-train"), *common, "--distributed-rank", str(rank)] for rank in range(world)]


def start_ranks(args, world=2, **env):
    return [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1", **env))
            for command in rank_commands(args, world)]


def launch_ranks(args, world=2, timeout=300):
    """Run fairseq-train as ``world`` gloo processes on this machine; rank 0's output."""
    procs = start_ranks(args, world)
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
    return outs[0]


def write_corpus(folder, seed=0, sizes=(("train", 300), ("valid", 40), ("test", 37)), vocab=50):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    os.makedirs(folder, exist_ok=True)
    for split, lines in sizes:
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            for _ in range(lines):
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + "\n")


def binarize(text_dir, dest):
    fairseq("fairseq-preprocess", "--only-source", "--trainpref", f"{text_dir}/train.txt",
            "--validpref", f"{text_dir}/valid.txt", "--testpref", f"{text_dir}/test.txt",
            "--destdir", dest, "--workers", "1")
    return dest


def build_model(task, cfg):
    """``task.build_model`` on a DNILSTMLMConfig, as fairseq calls it (the task learns the model's spec)."""
    import dataclasses

    from omegaconf import OmegaConf

    return task.build_model(OmegaConf.structured(dataclasses.replace(cfg, _name="dni_lstm_lm")))


def build_dni(dictionary, model, criterion, double=True):
    """Our task, model and dni_cross_entropy criterion as fairseq builds them, in that order (so a seed
    set before gives the same initial weights). ``model`` and ``criterion`` are DNILSTMLMConfig and
    DNICrossEntropyConfig fields; float64 unless ``double`` is False. Returns (task, model, criterion)."""
    from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
    lm = build_model(task, DNILSTMLMConfig(**model))
    if double:
        lm = lm.double()
    crit = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(**criterion))
    return task, lm, crit.double() if double else crit


def run_window(model, criterion, sample, mode="synthetic", loss_scale=1.0):
    """One training window through fairseq_dni.step.train_window, with a plain (optionally scaled)
    backward in place of fairseq's optimizer wrapper."""
    from fairseq_dni.step import Backward, train_window

    return train_window(model, criterion, sample, Backward(loss_scale), mode)


TINY_MODEL = ["--arch", "dni_lstm_lm_small", "--decoder-embed-dim", "16", "--decoder-hidden-size", "16"]


def train_args(data, save_dir, *extra):
    return [data, "--user-dir", USER_DIR, "--task", "dni_language_modeling", *TINY_MODEL,
            "--tokens-per-sample", "7", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01",
            "--save-dir", save_dir, "--cpu", "--num-workers", "0", "--seed", "1",
            "--log-format", "json", "--log-interval", "1", "--no-progress-bar", *extra]


# ---- runs of dni_cross_entropy and of the alternating schedule through fairseq-train --------------------
DNI = ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--dni-lr", "0.01"]


def params(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same_lm(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if torch.is_tensor(a["model"][k]))


PERIOD, T_MULT, WARMUP, LR, MIN_LR = 10, 2, 3, 0.01, 0.0005
SCHEDULED = [
    "--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--base-optimizer", "adam",
    "--dni-lr", "0.003", "--clip-norm", "1.0",
    "--lr-scheduler", "cosine_alternating", "--lr-period-updates", PERIOD, "--t-mult", T_MULT,
    "--warmup-updates", WARMUP, "--min-lr", MIN_LR,
]


def alternating_args(data, save, *extra):
    args = train_args(data, save, *SCHEDULED, *extra)
    args[args.index("--lr") + 1] = str(LR)
    return args


def run_alternating(data, save, *extra):
    return fairseq("fairseq-train", *alternating_args(data, save, *extra))


def run_alternating_two_ranks(data, save, *extra):
    return launch_ranks(alternating_args(data, save, "--batch-size", "2", *extra))


# ---- AWD-LSTM at toy size ------------------------------------------------------------------------------
AWD_VOCAB = 24


def awd_dictionary():
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(AWD_VOCAB):
        d.add_symbol(f"w{i}")
    return d


def awd_config(**overrides):
    """An AWD-shaped model at toy size: 3 layers 6/6/4, 4-d tied embedding, every regulariser off."""
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig

    values = dict(decoder_embed_dim=4, decoder_hidden_size=6, decoder_layers=3, share_decoder_input_output_embed=True,
                  decoder_last_layer_out_dim=True, dropout=0.0)
    values.update(overrides)
    return DNILSTMLMConfig(**values)


def build_awd(cfg, seed=0):
    """Our task and model as fairseq builds them, in float64."""
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    task = DNILanguageModelingTask(DNILanguageModelingConfig(), awd_dictionary())
    torch.manual_seed(seed)
    model = build_model(task, cfg).double()
    return task, model


def awd_windows(bsz=3, length=5, tokens=200, key="train"):
    from fairseq_dni.data.stream_windows import StreamWindows

    d = awd_dictionary()
    ids = torch.randint(4, len(d), (tokens,), generator=torch.Generator().manual_seed(1)).numpy()
    w = StreamWindows(ids, bsz, length, d.pad(), d.eos(), state_key=key)
    return [w.collater([w[i]]) for i in range(len(w))]


def awd_train_args(data, save_dir, *extra):
    return [data, "--user-dir", USER_DIR, "--task", "dni_language_modeling", "--arch", "dni_awd_lstm_lm",
            "--decoder-embed-dim", "8", "--decoder-hidden-size", "12", "--criterion", "lm_cross_entropy",
            "--alpha", "2", "--beta", "1", "--tokens-per-sample", "7", "--batch-size", "4", "--optimizer", "adam",
            "--lr", "0.01", "--save-dir", save_dir, "--cpu", "--num-workers", "0", "--seed", "1",
            "--log-format", "json", "--log-interval", "1", "--no-progress-bar", *extra]
