"""Shared fixtures: a tiny generated corpus, binarized once, and a tiny trained checkpoint.

Nothing here reads the real corpora; the data is made at run time.
"""
import os
import random
import subprocess
import sys

import pytest

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


TINY_MODEL = ["--arch", "dni_lstm_lm_small", "--decoder-embed-dim", "16", "--decoder-hidden-size", "16"]


def train_args(data, save_dir, *extra):
    return [data, "--user-dir", USER_DIR, "--task", "dni_language_modeling", *TINY_MODEL,
            "--tokens-per-sample", "7", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01",
            "--save-dir", save_dir, "--cpu", "--num-workers", "0", "--seed", "1",
            "--log-format", "json", "--log-interval", "1", "--no-progress-bar", *extra]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_corpus(root / "text")
    return binarize(root / "text", root / "bin")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("ckpt")
    fairseq("fairseq-train", *train_args(tiny_data, save, "--max-epoch", "2"))
    return save / "checkpoint_last.pt"
