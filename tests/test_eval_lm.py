"""Stock fairseq-train / fairseq-eval-lm with --user-dir fairseq_dni, on tiny generated data."""
import os
import re
import subprocess

import pytest
import torch

from helpers import BIN, USER_DIR, assert_same_weights, fairseq, launch_ranks, train_args
from reference_lm import perplexity


def eval_lm(data, checkpoint, *extra):
    out = fairseq("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                  "--path", checkpoint, "--cpu", "--num-workers", "0", *extra)
    tokens = int(re.search(r"Evaluated ([\d,]+) tokens", out).group(1).replace(",", ""))
    loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", out).group(1))
    return tokens, loss


def count_tokens(text):
    with open(text) as f:
        return sum(len(line.split()) + 1 for line in f)


@pytest.mark.parametrize("streams,window", [(3, 7), (1, 5), (10, 35)])
def test_eval_lm_scores_every_test_token_once(tiny_data, tiny_checkpoint, streams, window):
    tokens, _ = eval_lm(tiny_data, tiny_checkpoint, "--batch-size", streams, "--tokens-per-sample", window)
    assert tokens == count_tokens(os.path.join(os.path.dirname(tiny_data), "text", "test.txt")) == 257


def test_eval_lm_perplexity_equals_a_plain_pytorch_loop(tiny_data, tiny_checkpoint):
    _, loss = eval_lm(tiny_data, tiny_checkpoint, "--batch-size", 1, "--tokens-per-sample", 6)
    text = os.path.join(os.path.dirname(tiny_data), "text", "test.txt")
    count, reference_loss, _ = perplexity(tiny_checkpoint, os.path.join(tiny_data, "dict.txt"), text)
    assert count == 257
    assert loss == pytest.approx(reference_loss, abs=6e-5)  # eval-lm prints 4 decimals


def test_two_ranks_read_disjoint_streams(tiny_data, tmp_path):
    """2 ranks x 2 streams (gloo on CPU) must train exactly like 1 rank x 4 streams.

    The 4 global streams are the same in both runs; if ranks overlapped or skipped
    streams, or stepped out of order, the gradients (summed over ranks) would differ.
    """
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "one", "--max-epoch", "1"))
    out = launch_ranks(train_args(tiny_data, tmp_path / "two", "--max-epoch", "1", "--batch-size", "2"))
    assert "rank 0/2 reads streams [0, 2) of 4" in out
    assert_same_weights(tmp_path / "one" / "checkpoint_last.pt", tmp_path / "two" / "checkpoint_last.pt",
                        rtol=1e-4, atol=1e-5)


def test_validation_mid_epoch_does_not_disturb_the_training_streams(tiny_data, tmp_path):
    """Validating every 7 updates (its own streams, its own carried state) changes no weight."""
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "plain", "--max-epoch", "1"))
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "val", "--max-epoch", "1",
                                               "--validate-interval-updates", "7"))
    assert out.count('"valid_loss"') > 5
    assert_same_weights(tmp_path / "plain" / "checkpoint_last.pt", tmp_path / "val" / "checkpoint_last.pt")


class Payload:
    """Unpickling this would run code (it writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_load_with_torch_safe_unpickler_and_code_is_refused(tiny_checkpoint, tmp_path):
    # our checkpoints load under torch's restricted unpickler, unchanged
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert "decoder.lstm.weight_hh_l0" in state["model"]
    # a checkpoint that would execute code is refused by fairseq's own loader
    marker = tmp_path / "pwned"
    evil = dict(state, extra_state={"x": Payload(marker)})
    torch.save(evil, tmp_path / "evil.pt")
    script = (
        "import sys, fairseq_dni\n"
        "from fairseq import checkpoint_utils\n"
        f"checkpoint_utils.load_checkpoint_to_cpu({str(tmp_path / 'evil.pt')!r})\n"
    )
    proc = subprocess.run([os.path.join(BIN, "python"), "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0 and "UnpicklingError" in proc.stderr + proc.stdout
    assert not marker.exists()


def test_legacy_checkpoint_objects_load_only_through_the_allow_list(tiny_checkpoint, tmp_path):
    """A fairseq checkpoint holding a legacy Namespace and numpy scalars loads safely with the plugin."""
    import argparse

    import numpy as np

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    state["extra_state"]["best"] = np.float64(state["extra_state"]["best"])
    state["legacy_args"] = argparse.Namespace(arch="dni_lstm_lm_small")
    torch.save(state, tmp_path / "legacy.pt")
    script = (
        "import sys\n"
        "from fairseq import checkpoint_utils\n"
        "path = sys.argv[1]\n"
        "try:\n"
        "    checkpoint_utils.load_checkpoint_to_cpu(path)\n"
        "    print('LOADED-WITHOUT-PLUGIN')\n"
        "except Exception as e:\n"
        "    print('REFUSED-WITHOUT-PLUGIN')\n"
        "import fairseq_dni\n"
        "state = checkpoint_utils.load_checkpoint_to_cpu(path)\n"
        "print('LOADED', state['legacy_args'].arch, float(state['extra_state']['best']))\n"
    )
    out = subprocess.run([os.path.join(BIN, "python"), "-c", script, str(tmp_path / "legacy.pt")],
                         capture_output=True, text=True).stdout
    assert "REFUSED-WITHOUT-PLUGIN" in out and "LOADED dni_lstm_lm_small" in out


@pytest.fixture(scope="module")
def plugin_checkpoints(tiny_data, tiny_checkpoint, tmp_path_factory):
    """One checkpoint per kind of config the plugin's commands write: Adam (every component a
    dataclass), SGD (fairseq keeps the config of its legacy ``sgd`` as an argparse.Namespace, which
    torch's safe loader refuses without the plugin's allow-list), the recipes' alternation."""
    found = {"adam": tiny_checkpoint}
    for kind, flags in {
        "sgd": ["--optimizer", "sgd", "--lr", "1"],
        "alternating": ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--base-optimizer", "sgd",
                        "--lr", "1", "--lr-scheduler", "cosine_alternating", "--lr-period-updates", "1"],
    }.items():
        save = tmp_path_factory.mktemp(kind)
        fairseq("fairseq-train", *train_args(tiny_data, save, "--max-update", "2"), *flags)
        found[kind] = save / "checkpoint_last.pt"
    return found


@pytest.mark.parametrize("naming", ["--path CKPT", "--path=CKPT"])
@pytest.mark.parametrize("kind", ["adam", "sgd", "alternating"])
def test_scoring_without_the_plugin_names_it(tiny_data, plugin_checkpoints, kind, naming, tmp_path):
    """fairseq alone dies with KeyError "'_name'" (or, for SGD, torch's refusal of argparse.Namespace);
    the installed hint names the missing plugin however the checkpoint is named."""
    ckpt = os.path.relpath(plugin_checkpoints[kind], tmp_path)  # a relative path, as users type it
    path_args = ["--path", ckpt] if naming == "--path CKPT" else [f"--path={ckpt}"]
    proc = subprocess.run([os.path.join(BIN, "fairseq-eval-lm"), tiny_data, *path_args, "--cpu"], cwd=tmp_path,
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    arch = "dni_lstm_lm_small"
    assert proc.stderr.splitlines()[-1] == (
        f"fairseq-dni: {ckpt} was trained with the fairseq-dni plugin (task dni_language_modeling, arch {arch}); "
        "load the plugin with --user-dir fairseq_dni")


def test_loading_from_a_script_without_the_plugin_names_it(plugin_checkpoints):
    """The same hint when fairseq's loader is called from Python (no --path on the command line)."""
    import fairseq_dni_hint

    ckpt = str(plugin_checkpoints["sgd"])
    script = f"from fairseq import checkpoint_utils; checkpoint_utils.load_model_ensemble([{ckpt!r}])"
    proc = subprocess.run([os.path.join(BIN, "python"), "-c", script], capture_output=True, text=True)
    assert proc.returncode != 0 and "Unsupported global" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"fairseq-dni: {ckpt} was trained with the fairseq-dni plugin")
    # a checkpoint of another task and model gets no hint
    import fairseq_dni.checkpoint_safety  # noqa: F401  (the allow-list this SGD checkpoint needs)

    state = torch.load(ckpt, weights_only=True)
    state["cfg"]["task"]["_name"], state["cfg"]["model"]["_name"] = "language_modeling", "lstm_lm"
    torch.save(state, ckpt + ".stock")
    assert fairseq_dni_hint.plugin_components(ckpt + ".stock") is None
    assert fairseq_dni_hint.plugin_components(ckpt) == ("dni_language_modeling", "dni_lstm_lm_small")


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "5000"], "fewer than the 5000 streams"),
    (["--lr-scheduler", "cosine_alternating", "--lr-period-updates", "-3"], "--lr-period-updates must be a positive"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tiny_data, tmp_path, extra, message):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "ckpt", "--max-update", "2", *extra), check=False)
    assert "fairseq-dni: error:" in out and message in out
    assert "Traceback" not in out
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_missing_data_directory_is_one_clear_line(tmp_path):
    out = fairseq("fairseq-train", tmp_path / "nowhere", "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                  "--arch", "dni_lstm_lm_small", "--batch-size", "2", "--optimizer", "adam", "--lr", "0.1",
                  "--save-dir", tmp_path / "ckpt", "--cpu", check=False)
    assert "fairseq-dni: error: dni_language_modeling: no dictionary at" in out and "Traceback" not in out


def test_data_that_does_not_match_the_dictionary_is_refused(tiny_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    with open(bad / "dict.txt") as f:
        lines = f.readlines()
    with open(bad / "dict.txt", "w") as f:
        f.writelines(lines[:10])  # a dictionary too small for the binarized ids
    out = fairseq("fairseq-train", *train_args(bad, tmp_path / "ckpt", "--max-update", "2"), check=False)
    assert "data and dictionary do not match" in out and "Traceback" not in out


def test_window_longer_than_the_validation_set_is_one_shorter_window(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, "--max-update", "2", "--tokens-per-sample", "1000"))
    assert "valid: rank 0/1 reads streams [0, 4) of 4, 1 windows of 1000 tokens" in out
    assert '"valid_loss"' in out


def test_stock_task_with_our_arch_trains_statelessly(tiny_data, tmp_path):
    out = fairseq("fairseq-train", tiny_data, "--user-dir", USER_DIR, "--task", "language_modeling",
                  "--arch", "dni_lstm_lm_small", "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
                  "--tokens-per-sample", "8", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01",
                  "--max-update", "3", "--save-dir", tmp_path, "--cpu", "--num-workers", "0")
    assert "done training" in out


@pytest.mark.parametrize("args,message", [
    # an adaptive softmax whose cutoffs are not below the vocabulary (the WikiText-103 model on a small corpus)
    (["--arch", "dni_lstm_lm_wikitext103", "--criterion", "adaptive_loss"],
     "--adaptive-softmax-cutoff 20000,60000: cutoffs must increase and stay below the vocabulary size (56 types"),
    # an adaptive softmax with a criterion that cannot train it (an in-place autograd error at the first backward)
    (["--adaptive-softmax-cutoff", "20,40"], "--criterion cross_entropy cannot train an adaptive softmax"),
    # a stock fairseq model on our task (it would die on the 'state_key' keyword)
    (["--arch", "lstm_lm"], "--task dni_language_modeling feeds windows that continue a carried state"),
    (["--arch", "transformer_lm"], "TransformerLanguageModelConfig reads task.max_target_positions, which --task "
                                   "dni_language_modeling does not have"),
])
def test_combinations_that_cannot_work_are_one_line(tiny_data, tmp_path, args, message):
    command = train_args(tiny_data, tmp_path / "ckpt", "--max-update", "2", *args)
    if "transformer_lm" in args:  # our tiny sizes' flags are the LSTM's
        command = [a for a in command if a not in ("--decoder-hidden-size", "--decoder-embed-dim", "16")]
    out = fairseq("fairseq-train", *command, check=False)
    assert f"fairseq-dni: error: {message}" in out and "Traceback" not in out
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
