"""What a user runs against what the plugin can do: one line for each combination that would give a
traceback or a silent wrong number (issue 23). Each function is called from one place, named in its
docstring; the schedule's own check (a first cycle longer than the run) is the scheduler's
(``optim/lr_scheduler/cosine_alternating.py``: ``check_first_cycle_fits``).
"""
import itertools
import logging
import os
from typing import Optional

import numpy as np

from fairseq_dni.errors import DNIUserError

logger = logging.getLogger(__name__)


def given(value):
    """A task config field interpolated from another section of fairseq's config, or None where there is
    none (the section is absent, or the config was built outside fairseq, leaving ``${...}`` as text)."""
    return None if isinstance(value, str) and value.startswith("${") else value


def check_split_files(split: str, split_path: str, combine: bool = False):
    """Refuse a split that fairseq-preprocess binarized from an empty text file (``.bin`` of 0 bytes),
    which fairseq's loader would memory-map into ``ValueError: cannot mmap an empty file``. Checks
    every file the loader reads (``train``, ``train1``, ... with ``combine``). Called by the task's
    ``load_dataset`` before fairseq's loader."""
    for k in itertools.count():
        path = split_path + (str(k) if k > 0 else "")
        if not os.path.isfile(path + ".idx"):
            return
        if os.path.isfile(path + ".bin") and os.path.getsize(path + ".bin") == 0:
            raise DNIUserError(
                f"dni_language_modeling: split '{split}' at {path}.bin is empty (fairseq-preprocess wrote no tokens: "
                f"was its text file empty?); give it text, or leave it out (fairseq-train: --disable-validation "
                f"or another --valid-subset; fairseq-eval-lm: another --gen-subset)")
        if not combine:
            return


def check_vocabulary(embedding_rows: Optional[int], dictionary_size: int):
    """Refuse a checkpoint whose model was trained with another dictionary than ``data``'s
    (torch's ``size mismatch for decoder.embed_tokens.weight`` traceback otherwise). A different
    dictionary of the same size cannot be detected. Called by the model's ``load_state_dict``."""
    if embedding_rows is not None and embedding_rows != dictionary_size:
        raise DNIUserError(
            f"this checkpoint's model has a vocabulary of {embedding_rows} types, but the data's dict.txt "
            f"has {dictionary_size}: use it with data binarized with the dictionary it was trained with "
            f"(fairseq-preprocess --only-source --srcdict THAT/dict.txt ...)")


def word_level_options(post_process: Optional[str], output_word_stats: bool):
    """The fairseq-eval-lm options whose numbers would depend on ``--tokens-per-sample`` and
    ``--batch-size`` here: fairseq merges a word's subword pieces (``--post-process``/``--remove-bpe``)
    and pairs a word with the next (``--output-word-stats``) only within a row of a batch, and this
    task's rows are windows of streams, so a word cut by a window boundary would count twice."""
    options = []
    if post_process is not None:
        options.append(f"--post-process {post_process!r}")
    if output_word_stats:
        options.append("--output-word-stats")
    return options


def refuse_window_dependent_eval_options(post_process, output_word_stats, tokens, dictionary, split: str):
    """One line instead of a number that depends on the window (see :func:`word_level_options`), saying
    what works: fairseq's word-level loss is the summed token log-probability over the number of words,
    so it is the token-level loss x tokens / words, which this line gives for ``split``. Words: pieces not
    ending in ``@@`` (subword-nmt), else pieces starting with ``\u2581`` (sentencepiece) plus the ``</s>``
    ending each line, else tokens; ``</s>`` counts as a word, as in fairseq. ``tokens``: the split's token
    ids (1-D). Called by the task's ``eval_lm_dataloader``."""
    options = word_level_options(post_process, output_word_stats)
    if not options:
        return
    ids = np.asarray(tokens)
    continuation = [i for i in range(len(dictionary)) if dictionary[i].endswith("@@")]
    word_start = [i for i in range(len(dictionary)) if dictionary[i].startswith("\u2581")]
    if continuation:
        scheme, n_words = "'@@ ' pieces", len(ids) - int(np.isin(ids, continuation).sum())
    elif word_start:
        scheme, n_words = "sentencepiece pieces", int(np.isin(ids, word_start + [dictionary.eos()]).sum())
    else:
        scheme, n_words = None, len(ids)
    words = (f"for {scheme}, the word-level loss of {split} is the token-level loss x {len(ids)}/{n_words} "
             f"(tokens/words), its perplexity 2 ** that" if scheme else
             f"{split} has no subword pieces ('@@' or sentencepiece's), so its word-level loss is its token-level loss")
    raise DNIUserError(
        f"fairseq-eval-lm {' and '.join(options)}: fairseq joins a word's pieces (and a word with the next) "
        f"only within a row, and dni_language_modeling's rows are windows of streams, so the number would depend "
        f"on --tokens-per-sample and --batch-size; drop it: {words}")


def generation_refusal(tool_data: Optional[str], checkpoint: Optional[str], user_dir: Optional[str]) -> str:
    """The line that fairseq-generate and fairseq-interactive print on our LM: their search starts every
    prompt from an empty state and asks the model for attention it has not, while the hub's ``sample()``
    continues the carried state. Gives a command that works (the test runs it). Called by the task's
    ``build_generator``."""
    folder, name = os.path.split(checkpoint or "CHECKPOINT_DIR/checkpoint_best.pt")
    plugin_parent = os.path.dirname(os.path.abspath(user_dir)) if user_dir else None
    code = (f"from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel as LM; "
            f"lm = LM.from_pretrained('{folder or '.'}', '{name}', '{tool_data or 'DATA_DIR'}', tokenizer=None, bpe=None); "
            f"print(lm.sample('PROMPT WORDS', max_len=20))")
    prefix = f"PYTHONPATH={plugin_parent} " if plugin_parent else ""
    return ("fairseq-generate and fairseq-interactive cannot sample dni_language_modeling's stateful LMs (their search starts "
            "each prompt from an empty state, without the carried state): sample with the hub, which continues the "
            f"carried state from a prompt: {prefix}python -c \"{code}\" (tokenizer/bpe: as your corpus was encoded; "
            "see hub_interface.py)")


def warn_if_update_count_restarted(update_num: int, epochs_done: float, already: bool) -> bool:
    """fairseq restores the update count only with the optimizer: after ``--reset-optimizer`` it restarts
    at 0 while the data (and weights, carried state) continue from the checkpoint. Say once what
    restarts. Returns whether it was said (pass it back as ``already``). Called by the task's
    ``train_step``."""
    if already or update_num != 0 or epochs_done <= 0:
        return already
    logger.warning(
        "fairseq-dni: the update count restarted at 0 (fairseq restores it only with the optimizer: "
        "--reset-optimizer) while the data continue at %.3f epochs done: --max-update, and a schedule counted in "
        "updates (--lr-period-updates, --warmup-updates, --real-first-updates: the learning rate and the "
        "real/synthetic mode), start again; weights, carried state and --lr-period-epochs cycles continue", epochs_done)
    return True
