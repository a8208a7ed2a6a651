"""Shared fixtures: a tiny generated corpus, binarized once, and a tiny trained checkpoint (the
helpers they use, and the test files share, are in helpers.py).

Nothing here reads the real corpora; the data is made at run time.
"""
import pytest

from helpers import binarize, fairseq, train_args, write_corpus


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
