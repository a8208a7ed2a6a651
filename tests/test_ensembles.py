"""``python -m fairseq_dni.eval_lm``: fairseq-eval-lm with ``--path a.pt:b.pt`` ensembles (fairseq_dni/eval_lm.py).

* one path: the same printed lines as stock fairseq-eval-lm;
* a checkpoint with itself: the checkpoint's loss;
* two members: the loss of the average of their probabilities, computed here by one forward pass of each
  model over the whole test text (no windows, so the state carried across windows is checked too);
* one stream: the ensemble's loss does not depend on the window length (each member carries its own state).
"""
import math
import re
import subprocess
import sys

import pytest
import torch

from helpers import REPO, USER_DIR, fairseq, train_args


@pytest.fixture(scope="module")
def second_checkpoint(tiny_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("second")
    fairseq("fairseq-train", *train_args(tiny_data, save, "--max-epoch", "1", "--seed", "2"))
    return save / "checkpoint_last.pt"


def eval_args(data, paths, *extra):
    return [str(data), "--user-dir", USER_DIR, "--task", "dni_language_modeling", "--gen-subset", "test",
            "--path", ":".join(map(str, paths)), "--cpu", "--num-workers", "0", *map(str, extra)]


def ensemble_loss(data, paths, *extra):
    """The base-2 loss per token that fairseq_dni.eval_lm computes (in this process)."""
    from fairseq import distributed_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_dni import eval_lm

    args = options.parse_args_and_arch(options.get_eval_lm_parser(), eval_args(data, paths, *extra))
    return float(eval_lm.main(convert_namespace_to_omegaconf(args))["loss"])


def printed(out):
    """The lines of an eval-lm log that carry numbers, timings dropped."""
    evaluated = re.search(r"Evaluated ([0-9,]+) tokens", out).group(1)
    return evaluated, re.search(r"Loss \(base 2\): .*", out).group(0)


def test_one_path_prints_what_stock_eval_lm_prints(tiny_data, tiny_checkpoint):
    args = eval_args(tiny_data, [tiny_checkpoint], "--batch-size", "3")
    stock = fairseq("fairseq-eval-lm", *args)
    ours = subprocess.run([sys.executable, "-m", "fairseq_dni.eval_lm", *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=True).stdout
    assert printed(ours) == printed(stock)
    assert printed(ours)[0] == "257"


def test_a_checkpoint_with_itself_equals_the_checkpoint(tiny_data, tiny_checkpoint):
    alone = ensemble_loss(tiny_data, [tiny_checkpoint], "--batch-size", "3")
    twice = ensemble_loss(tiny_data, [tiny_checkpoint, tiny_checkpoint], "--batch-size", "3")
    # alone: log-softmax; twice: log of the averaged softmax (fairseq's SequenceScorer): the same up to rounding
    assert twice == pytest.approx(alone, rel=1e-6)


def test_two_members_average_their_probabilities(tiny_data, tiny_checkpoint, second_checkpoint):
    from fairseq import checkpoint_utils

    from fairseq.data import data_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(tiny_checkpoint), str(second_checkpoint)])
    lines = data_utils.load_indexed_dataset(str(tiny_data / "test"), task.dictionary)
    tokens = torch.cat([lines[i] for i in range(len(lines))]).long()  # the test text, one line after another
    source = torch.cat([tokens.new_tensor([task.dictionary.eos()]), tokens[:-1]])  # one stream, from eos
    probs = []
    for model in models:
        model.eval()
        with torch.no_grad():
            logits, _ = model(source[None])          # one window over the whole text, state from zeros
        probs.append(torch.softmax(logits[0].double(), dim=-1).gather(1, tokens[:, None])[:, 0])
    want = -torch.log((probs[0] + probs[1]) / 2).mean().item() / math.log(2)
    got = ensemble_loss(tiny_data, [tiny_checkpoint, second_checkpoint], "--batch-size", "1",
                        "--tokens-per-sample", "7")
    assert got == pytest.approx(want, rel=1e-5)
    # and it is not simply either member's loss
    alone = [-torch.log(p).mean().item() / math.log(2) for p in probs]
    assert all(abs(got - a) > 1e-3 for a in alone)


def test_one_stream_ensemble_loss_does_not_depend_on_the_window(tiny_data, tiny_checkpoint, second_checkpoint):
    paths = [tiny_checkpoint, second_checkpoint]
    short = ensemble_loss(tiny_data, paths, "--batch-size", "1", "--tokens-per-sample", "3")
    long = ensemble_loss(tiny_data, paths, "--batch-size", "1", "--tokens-per-sample", "40")
    assert short == pytest.approx(long, rel=1e-6)
