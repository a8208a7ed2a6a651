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
from typing import Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import Dictionary, data_utils, iterators
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from fairseq_dni.carried_state import carried_states, world_size
from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.data.token_stream import TokenStream, flat_tokens
from fairseq_dni.errors import DNIDataNotFound, DNIUserError
from fairseq_dni.models.dni_lstm_lm import DNILSTMDecoder, RecurrentInterface
from fairseq_dni.optim.alternating import current_loss_scale, find_alternating
from fairseq_dni.optim.lr_scheduler.cosine_alternating import Clock
from fairseq_dni.snapshots import keep_cycle_end

try:  # fairseq's AMP wrapper; the task only needs its type
    from fairseq.optim.amp_optimizer import AMPOptimizer
except ImportError:  # pragma: no cover
    AMPOptimizer = ()

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


def unwrap(module):
    """The module inside fairseq's distributed wrappers (which keep it as ``.module``)."""
    while isinstance(getattr(module, "module", None), torch.nn.Module):
        module = module.module
    return module


def unscored_ids(dictionary: Dictionary, symbols: str):
    """Dictionary ids of the comma-separated ``symbols`` (sorted); unknown ones are a user error."""
    names = [name for name in (symbols or "").split(",") if name]
    missing = [name for name in names if dictionary.index(name) == dictionary.unk() and name != dictionary.unk_word]
    if missing:
        raise DNIUserError(f"--unscored-symbols: {', '.join(missing)} not in the dictionary")
    return sorted({dictionary.index(name) for name in names})


@register_task("dni_language_modeling", dataclass=DNILanguageModelingConfig)
class DNILanguageModelingTask(FairseqTask):
    def __init__(self, cfg: DNILanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        # the model's recurrent state layout and sizes, for a DNI criterion (fairseq builds the
        # criterion after the model, from the task); None until build_model, or for other models
        self.recurrent: Optional[RecurrentInterface] = None
        self._update_windows = (None, [])  # (update number, its windows' lengths): --variable-window's lr scale
        self._update_start = (None, None, [])  # (update, its first window, carried values then): AMP retries
        self.unscored = unscored_ids(dictionary, cfg.unscored_symbols)

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
        if not isinstance(decoder, DNILSTMDecoder):
            raise DNIUserError(
                f"--task dni_language_modeling feeds windows that continue a carried state, which only fairseq-dni's "
                f"models read: use --arch dni_lstm_lm (or dni_lstm_lm_small, dni_lstm_lm_wikitext103, ...); for "
                f"--arch {getattr(cfg, '_name', None) or 'this model'} use --task language_modeling")
        self.recurrent = decoder.recurrent_interface()
        return model

    def build_criterion(self, cfg, from_checkpoint=False):
        if self.recurrent is not None and self.recurrent.adaptive_softmax and cfg._name not in ADAPTIVE_CRITERIA:
            raise DNIUserError(
                f"--criterion {cfg._name} cannot train an adaptive softmax (--adaptive-softmax-cutoff, or "
                f"--arch dni_lstm_lm_wikitext103): use --criterion adaptive_loss, or dni_cross_entropy")
        return super().build_criterion(cfg, from_checkpoint)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """One truncated-BPTT window over this rank's B streams (one micro-batch).

        The whole DNI step, in order (``--criterion dni_cross_entropy``; any other criterion does 2 and 3):

        1. where training is (update, epochs done): ``cosine_alternating`` sets this window's learning
           rate (epoch clock) and the criterion its mode (the schedule's, else ``--dni-mode``);
        2. forward: the LM loss from the carried state s_{t-1} (made a leaf), + the synthesizer's
           regression loss for the pair whose target arrived last window, + in synthetic mode
           ``scale * <s_t, M(s_t)>``, which injects the synthetic gradient at the window's end;
        3. backward (fairseq's optimizer wrapper: loss scaling, fp16/AMP);
        4. the gradient left on s_{t-1}, unscaled, becomes the target of the prediction made at
           s_{t-1}: the pending pair, regressed at the next window (``after_backward``);
        5. s_t (the model's) and the synthesizer's carry (the criterion's) go to the next window;
           with several ranks every rank's copy is gathered, for rank 0's checkpoint.
        """
        from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyCriterion

        self.rewind_if_retried(update_num, sample, model, criterion)
        dni = unwrap(criterion)
        dni = dni if isinstance(dni, DNICrossEntropyCriterion) else None
        alternating = find_alternating(optimizer)
        clock = Clock(update=update_num, epoch=sample["epochs_done"])                   # 1
        if alternating is not None and alternating.mode_schedule is not None:
            alternating.mode_schedule.set_clock(clock)
        if dni is not None:
            dni.set_mode_for(alternating, clock)
        model.train()
        model.set_num_updates(update_num)
        with torch.autograd.profiler.record_function("forward"):
            with torch.autocast("cuda", enabled=isinstance(optimizer, AMPOptimizer)):
                loss, sample_size, logging_output = criterion(model, sample)            # 2
        if ignore_grad:
            loss *= 0
        if self.cfg.variable_window:
            update, lengths = self._update_windows
            self._update_windows = (update_num, (lengths if update == update_num else []) + [sample["target"].size(1)])
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)                                                     # 3
        if dni is not None:
            dni.after_backward(loss_scale=current_loss_scale(optimizer), valid=not ignore_grad)  # 4
        if world_size() > 1:
            for carried in carried_states(model, criterion):                             # 5
                carried.share_across_ranks()
        return loss, sample_size, logging_output

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
        return self.get_batch_iterator(
            dataset, max_sentences=batch_size, num_shards=num_shards, shard_id=shard_id,
            num_workers=num_workers, data_buffer_size=data_buffer_size,
        ).next_epoch_itr(shuffle=False)

    def post_save(self, cp_path, num_updates):
        """fairseq's hook after every checkpoint it writes: --keep-cycle-ends keeps a copy at a cycle's end."""
        keep_cycle_end(cp_path)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
