"""``python -m fairseq_dni.eval_lm``: fairseq-eval-lm, with ``--path a.pt:b.pt[:c.pt]`` scoring an ensemble.

Takes exactly fairseq-eval-lm's arguments (``--user-dir fairseq_dni --task dni_language_modeling ...``)
and runs fairseq's own ``fairseq_cli.eval_lm.main``: its data loading, its ``eval_lm`` loop and
fairseq's ``SequenceScorer``, which scores an ensemble by the average of its members' probabilities,
``log((p_1 + ... + p_K) / K)`` per target token (a snapshot ensemble, Huang et al. 2017). The one
difference: fairseq 0.12's ``eval_lm.main`` loads ``[cfg.common_eval.path]`` as a single file, where
``fairseq-generate`` splits the path on ``:``; here it is split the same way (``fairseq.utils.split_paths``),
for the length of the call only. With one path the run is stock fairseq-eval-lm's, line for line.

Each member is its own model object, so each carries its own LSTM state across windows (the
``test`` stream set of its own decoder): with one stream (``--batch-size 1``) the ensemble's loss does
not depend on ``--tokens-per-sample``. The members must share the data's dictionary; they may differ
in size and architecture.

Example (the quickstart's data; the last three cycle-end snapshots of a run, see docs/usage.md)::

    python -m fairseq_dni.eval_lm runs/quickstart/data-bin --user-dir fairseq_dni --task dni_language_modeling \\
        --path ckpt/checkpoint_cycle4_real.pt:ckpt/checkpoint_cycle5_synthetic.pt:ckpt/checkpoint_cycle6_real.pt \\
        --gen-subset test --batch-size 10 --tokens-per-sample 35 --cpu
"""
import contextlib

from fairseq import checkpoint_utils, distributed_utils, options, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import eval_lm as fairseq_eval_lm


@contextlib.contextmanager
def ensemble_paths():
    """While open, ``checkpoint_utils.load_model_ensemble_and_task`` splits each path it is given on
    ``:`` (what ``fairseq-generate`` does with ``--path``), loading one model per file."""
    stock = checkpoint_utils.load_model_ensemble_and_task

    def load_members(filenames, *args, **kwargs):
        members = [member for name in filenames for member in utils.split_paths(name)]
        return stock(members, *args, **kwargs)

    checkpoint_utils.load_model_ensemble_and_task = load_members
    try:
        yield
    finally:
        checkpoint_utils.load_model_ensemble_and_task = stock


def main(cfg, **kwargs):
    """fairseq's ``eval_lm.main`` with ``--path`` split into ensemble members; returns its results
    (``{"loss": base-2 loss per token, "perplexity": 2**loss}``)."""
    with ensemble_paths():
        return fairseq_eval_lm.main(cfg, **kwargs)


def cli_main(argv=None):
    """fairseq-eval-lm's command line (``fairseq_cli.eval_lm.cli_main``), running :func:`main`."""
    parser = options.get_eval_lm_parser()
    args = options.parse_args_and_arch(parser, argv)
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), main)


if __name__ == "__main__":
    cli_main()
