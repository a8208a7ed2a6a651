"""Issue 23: user-facing faults found by trying public bug reports, one test per kind of fault, each on a
tiny case made here (300 training lines over 24 subword pieces, a 1 x 16 LSTM, --cpu): what the user
sees is one line, or the right behaviour, never a traceback or a number that depends on the window.
docs/RELIABILITY.md lists each with its test."""
import os
import random
import re
import subprocess

import pytest

from helpers import BIN, REPO, USER_DIR, assert_same_weights, fairseq, train_args, train_inner

WORDS = [f"w{i}" for i in range(16)] + [f"p{i}@@ q{i}" for i in range(4)]  # 16 + 8 pieces: 24 types


def write_subword_corpus(folder, sizes=(("train", 300), ("valid", 40), ("test", 37)), seed=0):
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    for split, lines in sizes:
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            for _ in range(lines):
                f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) + "\n")


def preprocess(text, dest, *extra):
    fairseq("fairseq-preprocess", "--only-source", "--trainpref", f"{text}/train.txt", "--validpref",
            f"{text}/valid.txt", "--testpref", f"{text}/test.txt", "--destdir", dest, "--workers", "1", *extra)
    return str(dest)


def one_line_error(out):
    """The output's last line, asserting it is our one-line error and that no traceback came before."""
    assert "Traceback" not in out, out[-3000:]
    line = out.strip().splitlines()[-1]
    assert line.startswith("fairseq-dni: error: "), out[-3000:]
    return line


@pytest.fixture(scope="module")
def subword(tmp_path_factory):
    root = tmp_path_factory.mktemp("subword")
    write_subword_corpus(root / "text")
    return root


@pytest.fixture(scope="module")
def data(subword):
    return preprocess(subword / "text", subword / "bin")


@pytest.fixture(scope="module")
def bptt_checkpoint(data, tmp_path_factory):
    """Plain truncated BPTT (--criterion cross_entropy, adam): the paper's real-gradient first phase."""
    save = tmp_path_factory.mktemp("bptt")
    fairseq("fairseq-train", *train_args(data, save, "--max-epoch", "1", "--decoder-layers", "1"))
    return save / "checkpoint_last.pt"


def eval_lm(data, checkpoint, *extra, check=True):
    return fairseq("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "dni_language_modeling", "--path",
                   checkpoint, "--gen-subset", "test",
                   "--cpu", "--num-workers", "0", *extra, check=check)


def loss_of(out):
    return float(re.search(r"Loss \(base 2\): ([0-9.]+)", out).group(1))


# ---- 1. word-level numbers of fairseq-eval-lm depend on the window ----------------------------------------
def test_eval_lm_refuses_word_level_options_whose_numbers_depend_on_the_window(subword, data, bptt_checkpoint):
    """fairseq merges a word's pieces only within a row, our rows are windows: with --post-process '@@ '
    the loss was 5.44 / 6.05 / 6.43 at T = 1 / 3 / one window per stream. Refused in one line that gives
    the split's tokens/words (counted here from the text), the factor from token- to word-level loss;
    every number eval-lm still prints is the same for every window length."""
    lines = (subword / "text" / "test.txt").read_text().splitlines()
    pieces = [p for line in lines for p in line.split()]
    tokens = len(pieces) + len(lines)  # each line ends in </s>
    words = tokens - sum(p.endswith("@@") for p in pieces)
    for option in (["--post-process", "@@ "], ["--remove-bpe"]):  # the latter is fairseq's subword_nmt
        line = one_line_error(eval_lm(data, bptt_checkpoint, "--batch-size", "1", "--tokens-per-sample", "3",
                                      *option, check=False))
        assert "the number would depend on --tokens-per-sample and --batch-size" in line
        assert f"the word-level loss of test is the token-level loss x {tokens}/{words}" in line
    line = one_line_error(eval_lm(data, bptt_checkpoint, "--output-word-stats", check=False))
    assert "fairseq-eval-lm --output-word-stats" in line
    # what is left: the token-level loss (and --output-word-probs, token by token) is the window's no matter
    short, whole = (eval_lm(data, bptt_checkpoint, "--batch-size", "1", "--tokens-per-sample", t,
                            "--output-word-probs") for t in ("3", "100000"))
    assert loss_of(short) == pytest.approx(loss_of(whole), abs=1e-4)
    short_probs, whole_probs = ([float(p) for row in re.findall(r"eval_lm:\d+ (.*)", out)
                                 for p in re.findall(r" \[(-?[0-9.]+)\]", row)] for out in (short, whole))
    assert len(short_probs) == tokens and short_probs == pytest.approx(whole_probs, abs=1e-5)


# ---- 2. continuing BPTT pre-training with synthetic gradients ----------------------------------------------
DNI = ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--base-optimizer", "adam",
       "--dni-mode", "synthetic", "--decoder-layers", "1"]


def test_a_bptt_checkpoint_continues_with_synthetic_gradients(data, bptt_checkpoint, tmp_path):
    """The paper's sequence (real gradients first, then synthetic): fairseq read the missing synthesizer as
    'ensure that the architectures match'. Now the LM is loaded bitwise (checked with --lr 0), the
    synthesizer starts afresh, logged; through --finetune-from-model and through --restore-file with the
    resets; and a DNI checkpoint still continues as plain TBPTT (the reverse)."""
    fresh = "the checkpoint has no synthesizer (trained with another criterion"
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "ft", *DNI, "--lr", "0", "--max-update", "3",
                                               "--finetune-from-model", bptt_checkpoint))
    assert fresh in out and len(train_inner(out)) == 3
    assert_same_weights(bptt_checkpoint, tmp_path / "ft" / "checkpoint_last.pt")  # every LM tensor, bitwise
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "rs", *DNI, "--max-update", "3", "--restore-file",
                                               bptt_checkpoint, "--reset-optimizer", "--reset-lr-scheduler",
                                               "--reset-meters"))
    assert fresh in out and "Loaded checkpoint" in out
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "back", "--max-update", "2", "--decoder-layers", "1",
                                               "--finetune-from-model", tmp_path / "ft" / "checkpoint_last.pt"))
    assert fresh not in out and len(train_inner(out)) == 2


# ---- 3. empty splits and other data that does not fit the model --------------------------------------------
def test_an_empty_split_is_one_line_naming_the_split_and_its_file(subword, data, bptt_checkpoint, tmp_path):
    """fairseq-preprocess binarizes an empty text file into an empty .bin, which fairseq's loader cannot
    memory-map ('ValueError: cannot mmap an empty file', from eval-lm and fairseq-train alike)."""
    text = tmp_path / "text"
    write_subword_corpus(text, sizes=(("train", 300), ("valid", 0), ("test", 0)))
    empty = preprocess(text, tmp_path / "bin", "--srcdict", f"{data}/dict.txt")
    line = one_line_error(eval_lm(empty, bptt_checkpoint, check=False))
    assert f"split 'test' at {empty}/test.bin is empty" in line
    line = one_line_error(fairseq("fairseq-train", *train_args(empty, tmp_path / "ck", "--max-epoch", "1"),
                                  check=False))
    assert f"split 'valid' at {empty}/valid.bin is empty" in line


def test_a_checkpoint_scored_on_another_dictionary_is_one_line(tiny_checkpoint, data):
    """A model trained with a 56-type dictionary scored on 32-type data: torch's 'size mismatch for
    decoder.embed_tokens.weight' traceback before; now one line saying what to do."""
    line = one_line_error(eval_lm(data, tiny_checkpoint, check=False))
    assert "this checkpoint's model has a vocabulary of 56 types, but the data's dict.txt has 32" in line


# ---- 4. a first cycle longer than the run, in the other unit -----------------------------------------------
def test_a_first_cycle_longer_than_the_run_in_the_other_unit_is_refused(data, tmp_path):
    """--lr-period-updates against --max-epoch (and --lr-period-epochs against --max-update) trained
    silently, never restarting nor switching mode; refused once the task knows the epoch's updates,
    --update-freq counted. A cycle that fits still trains."""
    sched = ["--lr-scheduler", "cosine_alternating", "--decoder-layers", "1"]
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "a", *sched, "--lr-period-updates", "200",
                                               "--max-epoch", "1"), check=False)
    line = one_line_error(out)
    per_epoch = int(re.search(r"--max-epoch 1: (\d+) updates of \1 updates per epoch", line).group(1))
    assert line.startswith("fairseq-dni: error: the first cosine cycle (200 updates) is longer than the run")
    assert 40 < per_epoch < 200
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "b", *sched, "--optimizer", "alternating",
                                               "--lr-period-epochs", "3", "--max-update", "40"), check=False)
    assert f"the first cosine cycle (3 epochs) is longer than the run (--max-update 40: {40 / per_epoch:.4g} epochs" \
        in one_line_error(out)
    half = -(-per_epoch // 2)  # whole updates of two windows
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "c", *sched, "--lr-period-updates", str(half + 1),
                                               "--update-freq", "2", "--max-epoch", "1"), check=False)
    assert f"(--max-epoch 1: {half} updates of {half} updates per epoch with --update-freq 2)" in one_line_error(out)
    out = fairseq("fairseq-train", *train_args(data, tmp_path / "d", *sched, "--lr-period-updates", str(half),
                                               "--update-freq", "2", "--max-epoch", "1"))
    assert len(train_inner(out)) == half


def test_the_run_length_in_the_other_unit_is_exact():
    """The pure check against hand-computed run lengths (65 updates per epoch, as in the issue)."""
    from types import SimpleNamespace

    from fairseq_dni.errors import DNIUserError
    from fairseq_dni.optim.lr_scheduler.cosine_alternating import check_first_cycle_fits

    def schedule(**kw):
        base = dict(_name="cosine_alternating", lr_period_updates=None, lr_period_epochs=None, warmup_updates=0,
                    real_first_updates=0, real_first_epochs=0)
        return SimpleNamespace(**dict(base, **kw))

    check_first_cycle_fits(schedule(lr_period_updates=65), 0, 1, 65)              # exactly one epoch: fits
    check_first_cycle_fits(schedule(lr_period_updates=60, warmup_updates=5), 0, 1, 65)
    for sched, max_update, max_epoch, message in (
            (schedule(lr_period_updates=60, warmup_updates=6), 0, 1, "(66 updates) is longer than the run "
                                                                      "(--max-epoch 1: 65 updates"),
            (schedule(lr_period_updates=200), 0, 3, "--max-epoch 3: 195 updates"),
            (schedule(lr_period_updates=100), 1000, 1, "--max-epoch 1: 65 updates"),   # the shorter limit
            (schedule(lr_period_epochs="3,3"), 130, 0, "(--max-update 130: 2 epochs"),
            (schedule(lr_period_epochs="1", real_first_epochs=2), 130, 5, "--real-first-epochs 2 covers the whole run"),
            (schedule(lr_period_updates=10, real_first_updates=65), 0, 1, "--real-first-updates 65 covers")):
        with pytest.raises(DNIUserError, match=re.escape(message)):
            check_first_cycle_fits(sched, max_update, max_epoch, 65)
    check_first_cycle_fits(schedule(lr_period_epochs="2"), 130, 0, 65)
    check_first_cycle_fits(SimpleNamespace(_name="cosine"), 1, 1, 65)             # another scheduler: not ours


# ---- 5. --reset-optimizer restarts the update count ------------------------------------------------------
def test_reset_optimizer_says_in_one_line_what_restarts(data, tmp_path):
    """fairseq restores the update count only with the optimizer: with --reset-optimizer it restarts at 0
    (and with it an update-counted schedule, the mode, --max-update) while data and weights continue.
    Said once, in one line; a plain resume says nothing."""
    args = ["--lr-scheduler", "cosine_alternating", "--lr-period-updates", "3", "--decoder-layers", "1"]
    fairseq("fairseq-train", *train_args(data, tmp_path, *args, "--max-update", "15"))
    out = fairseq("fairseq-train", *train_args(data, tmp_path, *args, "--max-update", "20"))
    assert "update count restarted" not in out and len(train_inner(out)) == 5
    out = fairseq("fairseq-train", *train_args(data, tmp_path, *args, "--max-update", "3", "--reset-optimizer"))
    said = [line for line in out.splitlines() if "fairseq-dni: the update count restarted at 0" in line]
    assert len(said) == 1 and "--max-update, and a schedule counted in updates" in said[0]
    assert [row["num_updates"] for row in train_inner(out)] == ["1", "2", "3"]


# ---- 6. fairseq-generate and fairseq-interactive -----------------------------------------------------------
def test_generate_and_interactive_say_to_sample_with_the_hub_and_the_command_works(data, bptt_checkpoint):
    """generate died with KeyError 'attn', interactive with NotImplementedError; each now says in one line
    to use the hub's sample(), with a command that works as printed (run here)."""
    common = [data, "--user-dir", USER_DIR, "--task", "dni_language_modeling", "--path", bptt_checkpoint, "--cpu",
              "--num-workers", "0"]
    line = one_line_error(fairseq("fairseq-generate", *common, "--gen-subset", "test", check=False))
    assert "fairseq-generate and fairseq-interactive cannot sample" in line
    proc = subprocess.run([os.path.join(BIN, "fairseq-interactive"), *map(str, common)], input="w1 w2\n",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, timeout=300)
    assert one_line_error(proc.stdout) == line
    command = re.search(r"sample with the hub, which continues the carried state from a prompt: (.*) \(tokenizer",
                        line).group(1).replace("PROMPT WORDS", "w1 w2")
    # as pasted in a shell where the environment is active (its python first on PATH), from elsewhere
    path = os.pathsep.join([BIN, os.environ.get("PATH", "")])
    sampled = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd="/", env=dict(os.environ, PYTHONPATH="", PATH=path), timeout=300)
    assert sampled.returncode == 0, sampled.stdout[-3000:]
    assert sampled.stdout.strip().splitlines()[-1].startswith("w1 w2")
