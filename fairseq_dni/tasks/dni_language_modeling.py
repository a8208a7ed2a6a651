"""Task ``dni_language_modeling``: a binarized corpus read as stateful streams.

Why not fairseq's ``language_modeling`` task: it shuffles fixed-size blocks, so
no block follows the one before it and a carried LSTM state would be
meaningless. Here every batch is one truncated-BPTT window over ``B`` contiguous
streams per rank, in stream order, and it tells the model which carried state it
continues (``state_key`` = the split) and whether it opens a pass
(``reset_state``). Everything else (binarized data, dictionaries, iterators with
resumable position, checkpoints, logging, distributed training) is fairseq's own.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from fairseq import utils
from fairseq.data import Dictionary, data_utils, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from fairseq_dni.carried_state import carried_states
from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.data.token_stream import TokenStream, flat_tokens
from fairseq_dni.errors import DNIDataNotFound, DNIUserError
from fairseq_dni.models.stateful_lm import StatefulDecoder
from fairseq_dni.optim.alternating import Clock, find_alternating
from fairseq_dni.optim.lr_scheduler.cosine_alternating import check_first_cycle_fits
from fairseq_dni.run_checks import (
    check_split_files,
    generation_refusal,
    given,
    refuse_window_dependent_eval_options,
    warn_if_update_count_restarted,
)
from fairseq_dni.snapshots import keep_cycle_end
from fairseq_dni.step import WindowTask, train_window

logger = logging.getLogger(__name__)


@dataclass
class DNILanguageModelingConfig(FairseqDataclass):
    data: Optional[str] = field(
        default=None,
        metadata={"help": "data directory written by 'fairseq-preprocess --only-source' "
                          "(dict.txt plus train/valid/test .bin/.idx)"},
    )
    tokens_per_sample: int = field(
        default=35,
        metadata={"help": "window length T: tokens per truncated-BPTT window "
                          "(the carried state crosses window boundaries, gradients do not)"},
    )
    variable_window: bool = field(
        default=False,
        metadata={"help": "training windows of AWD-LSTM's variable length: around T (probability 0.95) or T/2, "
                          "std 5, at least 5 tokens, drawn anew each epoch from --seed; the learning rate of each "
                          "update is scaled by its window length / T (validation and eval-lm keep T)"},
    )
    eval_streams: int = field(
        default=10,
        metadata={"help": "streams for validation/test/eval-lm when no --batch-size(-valid) is given"},
    )
    unscored_symbols: str = field(
        default="",
        metadata={"help": "comma-separated dictionary symbols whose positions are not targets: they stay "
                          "inputs, their targets become padding, so the loss, ntokens and validation skip "
                          "them (e.g. the input phase of the copy task, examples/copy_task.py)"},
    )
    # the stream count is fairseq's own --batch-size / --batch-size-valid
    batch_size: Optional[int] = II("dataset.batch_size")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")
    seed: int = II("common.seed")
    # what the task checks against the rest of the run (run_checks.py, the schedule's first cycle);
    # null outside the tool that has them (e.g. no eval_lm options under fairseq-train)
    schedule: Any = "${oc.select:lr_scheduler,null}"
    optimization: Any = "${oc.select:optimization,null}"
    post_process: Optional[str] = "${oc.select:common_eval.post_process,null}"
    output_word_stats: Any = "${oc.select:eval_lm.output_word_stats,null}"  # Any: fairseq would read a bool field's text as True
    checkpoint_path: Optional[str] = "${oc.select:common_eval.path,null}"
    user_dir: Optional[str] = "${oc.select:common.user_dir,null}"


ADAPTIVE_CRITERIA = ("adaptive_loss", "dni_cross_entropy", "lm_cross_entropy")


def windows_of_epoch(windows: StreamWindows, epoch: int):
    """fairseq's per-epoch batch sampler: one batch per window of ``epoch``."""
    return [[i] for i in range(len(windows.boundaries(epoch)) - 1)]


class StreamBatchIterator(iterators.EpochBatchIterator):
    """fairseq's epoch iterator over :class:`StreamWindows`. Its saved position (the window index in
    the epoch) also records the stream layout and the token position it stands for, so that a run
    resumed with another ``--batch-size``/``--tokens-per-sample``/world size never applies a window
    index to the wrong tokens: it continues at the same token position when the new layout has a
    window starting there (same streams), else the epoch restarts from its first window, logged."""

    def layout(self):
        return {"streams": self.dataset.num_streams, "window": self.dataset.window,
                "variable_window": self.dataset.variable_window}

    def state_dict(self):
        state = super().state_dict()
        position = int(self.dataset.boundaries(state["epoch"])[state["iterations_in_epoch"]])
        return dict(state, stream_layout=dict(self.layout(), position=position))

    def load_state_dict(self, state_dict):
        saved = state_dict.get("stream_layout")
        done = state_dict.get("iterations_in_epoch", 0)
        if saved is not None and done > 0 and {k: saved[k] for k in self.layout()} != self.layout():
            epoch, position = state_dict["epoch"], saved["position"]
            bounds = self.dataset.boundaries(epoch)
            index = int(np.searchsorted(bounds[:-1], position))
            if saved["streams"] == self.layout()["streams"] and index < len(bounds) - 1 and bounds[index] == position:
                logger.info("resuming %d tokens into each of the %d streams: window %d of the new layout "
                            "(was window %d)", position, saved["streams"], index, done)
            else:
                logger.warning(
                    "fairseq-dni: this checkpoint stopped %d tokens into each of %d streams (%s-token windows); this "
                    "run reads %d streams of %s-token windows, where no window starts at that position, so epoch %d "
                    "restarts from its first window (from a zero state)", position, saved["streams"],
                    saved["window"], self.layout()["streams"], self.layout()["window"], epoch)
                index = 0
            state_dict = dict(state_dict, iterations_in_epoch=index)
        super().load_state_dict(state_dict)


def unscored_ids(dictionary: Dictionary, symbols: str):
    """Dictionary ids of the comma-separated ``symbols`` (sorted); unknown ones are a user error."""
    names = [name for name in (symbols or "").split(",") if name]
    missing = [name for name in names if dictionary.index(name) == dictionary.unk() and name != dictionary.unk_word]
    if missing:
        raise DNIUserError(f"--unscored-symbols: {', '.join(missing)} not in the dictionary")
    return sorted({dictionary.index(name) for name in names})


@register_task("dni_language_modeling", dataclass=DNILanguageModelingConfig)
class DNILanguageModelingTask(FairseqTask, WindowTask):
    def __init__(self, cfg: DNILanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        # self.model_spec (WindowTask): the model's state layout and sizes, for a DNI criterion (fairseq
        # builds the criterion after the model, from the task); set by build_model
        self._update_windows = (None, [])  # (update number, its windows' lengths): --variable-window's lr scale
        self._update_start = (None, None, [])  # (update, its first window, carried values then): AMP retries
        self.unscored = unscored_ids(dictionary, cfg.unscored_symbols)
        self._said_update_count_restarted = False
        self._train_windows: Optional[int] = None

    @classmethod
    def setup_task(cls, cfg: DNILanguageModelingConfig, **kwargs):
        paths = utils.split_paths(cfg.data or "")
        if not paths:
            raise DNIUserError("dni_language_modeling: no data directory given (first positional argument)")
        dict_path = os.path.join(paths[0], "dict.txt")
        if not os.path.isfile(dict_path):
            raise DNIDataNotFound(
                f"dni_language_modeling: no dictionary at {dict_path}"
                f"{'' if os.path.isabs(dict_path) else f' (relative to {os.getcwd()})'}; "
                "binarize the corpus with 'fairseq-preprocess --only-source' first"
            )
        dictionary = Dictionary.load(dict_path)
        logger.info("dictionary: %d types", len(dictionary))
        return cls(cfg, dictionary)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        paths = utils.split_paths(self.cfg.data)
        split_path = os.path.join(paths[(epoch - 1) % len(paths)], split)
        check_split_files(split, split_path, combine)
        indexed = data_utils.load_indexed_dataset(split_path, self.dictionary, combine=combine)
        if indexed is None:
            raise DNIDataNotFound(f"dni_language_modeling: split '{split}' not found at {split_path}.bin/.idx")
        tokens = flat_tokens(indexed)
        if len(tokens) and int(tokens.max()) >= len(self.dictionary):
            raise DNIUserError(
                f"dni_language_modeling: {split_path} holds token id {int(tokens.max())} but "
                f"dict.txt has only {len(self.dictionary)} types: data and dictionary do not match"
            )
        self.datasets[split] = TokenStream(split, tokens, keep_alive=indexed)
        logger.info("%s: %d tokens (%d lines)", split_path, len(tokens), len(indexed))

    def get_batch_iterator(
        self,
        dataset,
        max_tokens=None,
        max_sentences=None,
        num_shards=1,
        shard_id=0,
        num_workers=0,
        epoch=1,
        data_buffer_size=0,
        **unused,
    ):
        """Windows of this rank's streams, in order; ``max_sentences`` is the stream count.

        fairseq passes --batch-size for training, --batch-size-valid for validation and
        eval-lm's --batch-size for scoring; sharding across ranks happens here (each rank
        gets its own streams), so the iterator itself is never sharded again.
        """
        if not isinstance(dataset, TokenStream):
            raise TypeError("dni_language_modeling batches only its own splits")
        streams = max_sentences if max_sentences is not None else self.cfg.eval_streams
        variable = self.cfg.variable_window and dataset.split == "train"
        windows = StreamWindows(
            dataset.tokens,
            streams_per_rank=streams,
            tokens_per_window=self.cfg.tokens_per_sample,
            pad=self.dictionary.pad(),
            eos=self.dictionary.eos(),
            rank=shard_id,
            world_size=num_shards,
            state_key=dataset.split,
            variable_window=variable,
            seed=self.cfg.seed,
            epoch=epoch,
            unscored=self.unscored,
        )
        if dataset.split == "train" and self._train_windows is None:
            self._train_windows = len(windows)  # per rank, of this run's first epoch: begin_epoch's check
        logger.info(
            "%s: rank %d/%d reads streams [%d, %d) of %d, %d windows of %s tokens",
            dataset.split, shard_id, num_shards, shard_id * streams, (shard_id + 1) * streams,
            streams * num_shards, len(windows),
            f"about {self.cfg.tokens_per_sample} (variable)" if variable else self.cfg.tokens_per_sample,
        )
        return StreamBatchIterator(
            dataset=windows,
            collate_fn=windows.collater,
            # every dataset item is already a whole batch (one window); never shuffled, never re-sharded;
            # with variable windows the number of windows changes from epoch to epoch
            batch_sampler=windows_of_epoch if variable else [[i] for i in range(len(windows))],
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
        )

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        decoder = getattr(model, "decoder", None)
        if not isinstance(decoder, StatefulDecoder):
            raise DNIUserError(
                f"--task dni_language_modeling feeds windows that continue a carried state, which only fairseq-dni's "
                f"models read: use --arch dni_lstm_lm (or dni_lstm_lm_small, dni_lstm_lm_wikitext103, ...) or dni_qrnn_lm; for "
                f"--arch {getattr(cfg, '_name', None) or 'this model'} use --task language_modeling")
        self.model_spec = decoder.model_spec()
        return model

    def build_criterion(self, cfg, from_checkpoint=False):
        if self.model_spec is not None and self.model_spec.adaptive_softmax and cfg._name not in ADAPTIVE_CRITERIA:
            raise DNIUserError(
                f"--criterion {cfg._name} cannot train an adaptive softmax (--adaptive-softmax-cutoff, or "
                f"--arch dni_lstm_lm_wikitext103): use --criterion adaptive_loss, or dni_cross_entropy")
        return super().build_criterion(cfg, from_checkpoint)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """One truncated-BPTT window over this rank's B streams (one micro-batch): where training is
        (update, epochs done) goes to ``--optimizer alternating``, which answers the window's mode and sets
        its learning rate (``begin_window``); the window itself is ``fairseq_dni.step.train_window``."""
        self.rewind_if_retried(update_num, sample, model, criterion)
        self._said_update_count_restarted = warn_if_update_count_restarted(
            update_num, sample["epochs_done"], self._said_update_count_restarted)
        alternating = find_alternating(optimizer)
        mode = None if alternating is None else alternating.begin_window(Clock(update_num, sample["epochs_done"]))
        model.train()
        model.set_num_updates(update_num)
        if self.cfg.variable_window:
            update, lengths = self._update_windows
            self._update_windows = (update_num, (lengths if update == update_num else []) + [sample["target"].size(1)])
        return train_window(model, criterion, sample, optimizer, mode, ignore_grad)

    def rewind_if_retried(self, update_num, sample, model, criterion):
        """fairseq's ``--amp`` retries an update whose gradients overflowed by running its windows again
        (``amp_batch_retries``); by then the carried state (and the synthesizer's carry) has moved on by
        those windows. Keep what was carried when an update starts and put it back if the same update
        starts again with the same window."""
        first_window = (sample["epochs_done"], int(sample["id"][0]))
        stores = carried_states(model, criterion)
        update, window, snapshots = self._update_start
        if update == update_num and window == first_window:
            logger.info("update %d is run again (AMP overflow): carried state rewound to its start", update_num)
            for store, snapshot in zip(stores, snapshots):
                store.restore(snapshot)
            self._update_windows = (None, [])
        elif update != update_num:
            self._update_start = (update_num, first_window, [store.snapshot() for store in stores])

    def optimizer_step(self, optimizer, model, update_num):
        """fairseq's step; with ``--variable-window`` the LM's learning rate is scaled for this step by
        the window length over T (AWD-LSTM; the mean over the update's windows with --update-freq),
        then restored, so the schedule's learning rate is what fairseq logs."""
        update, lengths = self._update_windows
        factor = sum(lengths) / len(lengths) / self.cfg.tokens_per_sample if update == update_num and lengths else 1.0
        if factor == 1.0:
            optimizer.step()
            return
        lr = optimizer.get_lr()
        optimizer.set_lr(lr * factor)
        optimizer.step()
        optimizer.set_lr(lr)

    def begin_epoch(self, epoch, model):
        # only training calls this; --max-tokens alone cannot say how many streams to cut
        if self.cfg.batch_size is None:
            raise DNIUserError("dni_language_modeling needs --batch-size (streams per rank); --max-tokens alone is not enough")
        self.check_first_cycle_fits()

    def eval_lm_dataloader(self, dataset, max_tokens=36000, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        if self.unscored:
            raise DNIUserError(
                "fairseq-eval-lm cannot skip --unscored-symbols (its scorer assumes padding only at the "
                "end of a row); score with fairseq-validate, which uses the criterion")
        if context_window > 0:
            raise DNIUserError(
                "dni_language_modeling scores with the LSTM state carried across windows; "
                "--context-window does not apply (leave it at 0)"
            )
        refuse_window_dependent_eval_options(given(self.cfg.post_process), bool(given(self.cfg.output_word_stats)),
                                             dataset.tokens, self.dictionary, dataset.split)
        return self.get_batch_iterator(
            dataset, max_sentences=batch_size, num_shards=num_shards, shard_id=shard_id,
            num_workers=num_workers, data_buffer_size=data_buffer_size,
        ).next_epoch_itr(shuffle=False)

    def check_first_cycle_fits(self):
        """``cosine_alternating``'s first cycle against the run in the other unit, now that the updates
        per epoch are known (see ``cosine_alternating.check_first_cycle_fits``). Called by
        :meth:`begin_epoch`, before any update and after the scheduler's own checks."""
        run, windows_per_epoch = given(self.cfg.optimization), self._train_windows
        if run is None or windows_per_epoch is None:
            return
        update_freq = int(run.update_freq[0]) if run.update_freq else 1
        check_first_cycle_fits(given(self.cfg.schedule), run.max_update, run.max_epoch,
                               -(-windows_per_epoch // update_freq), update_freq)

    def build_generator(self, models, args, **unused):
        """Refused in one line (fairseq-generate, fairseq-interactive): see ``run_checks.generation_refusal``."""
        raise DNIUserError(generation_refusal(self.cfg.data, given(self.cfg.checkpoint_path), given(self.cfg.user_dir)))

    def post_save(self, cp_path, num_updates):
        """fairseq's hook after every checkpoint it writes: --keep-cycle-ends keeps a copy at a cycle's end."""
        schedule = given(self.cfg.schedule)
        if schedule is not None and schedule.get("keep_cycle_ends"):
            keep_cycle_end(cp_path)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
