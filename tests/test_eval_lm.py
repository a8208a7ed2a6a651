"""fairseq-eval-lm with --user-dir fairseq_dni on tiny generated data: every test token scored once, the
perplexity of a plain PyTorch loop, and a checkpoint scored without the plugin names it."""
import os
import re
import subprocess

import pytest
import torch

from helpers import BIN, USER_DIR, fairseq, train_args
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


class Payload:
    """Unpickling this would run code (it writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


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
