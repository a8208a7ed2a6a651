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
from fairseq.data import Dictionary, FairseqDataset, data_utils, iterators
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.errors import DNIDataNotFound, DNIUserError
from fairseq_dni.rank_state import share_training_state, world_size

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


class TokenStream(FairseqDataset):
    """One split as a flat token sequence (memory-mapped when the data is)."""

    def __init__(self, split: str, tokens: np.ndarray, keep_alive=None):
        self.split = split
        self.tokens = tokens
        self._keep_alive = keep_alive  # the indexed dataset that owns the memory map

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        raise TypeError("read TokenStream through the task's batch iterator")


def flat_tokens(indexed) -> np.ndarray:
    """All items of a fairseq indexed dataset, concatenated, without copying mmap data."""
    if isinstance(indexed, MMapIndexedDataset) and len(indexed) > 0:
        count = int(indexed.sizes.sum())
        first = int(indexed._index._pointers[0])
        return np.frombuffer(indexed._bin_buffer, dtype=indexed._index.dtype, count=count, offset=first)
    if len(indexed) == 0:
        return np.zeros(0, dtype=np.int64)
    return torch.cat([indexed[i] for i in range(len(indexed))]).numpy()


def current_loss_scale(optimizer) -> float:
    """The factor fairseq's optimizer wrapper multiplied the loss by before the last backward.

    FP16Optimizer / MemoryEfficientFP16Optimizer: ``scaler`` is fairseq's DynamicLossScaler
    (``loss_scale``; None under bf16); AMPOptimizer: ``scaler`` is torch's GradScaler.
    """
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None:
        return 1.0
    if hasattr(scaler, "loss_scale"):
        return float(scaler.loss_scale)
    if scaler.is_enabled():
        return float(scaler.get_scale())
    return 1.0


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
        self.unscored = unscored_ids(dictionary, cfg.unscored_symbols)

    @classmethod
    def setup_task(cls, cfg: DNILanguageModelingConfig, **kwargs):
        paths = utils.split_paths(cfg.data or "")
        if not paths:
            raise DNIUserError("dni_language_modeling: no data directory given (first positional argument)")
        dict_path = os.path.join(paths[0], "dict.txt")
        if not os.path.isfile(dict_path):
            raise DNIDataNotFound(
                f"dni_language_modeling: no dictionary at {dict_path}; "
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
        windows = StreamWindows(
            dataset.tokens,
            streams_per_rank=streams,
            tokens_per_window=self.cfg.tokens_per_sample,
            pad=self.dictionary.pad(),
            eos=self.dictionary.eos(),
            rank=shard_id,
            world_size=num_shards,
            state_key=dataset.split,
            unscored=self.unscored,
        )
        logger.info(
            "%s: rank %d/%d reads streams [%d, %d) of %d, %d windows of %d tokens",
            dataset.split, shard_id, num_shards, shard_id * streams, (shard_id + 1) * streams,
            streams * num_shards, len(windows), self.cfg.tokens_per_sample,
        )
        return iterators.EpochBatchIterator(
            dataset=windows,
            collate_fn=windows.collater,
            # every dataset item is already a whole batch; never shuffle, never re-shard
            batch_sampler=[[i] for i in range(len(windows))],
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
        )

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        lstm = getattr(getattr(model, "decoder", None), "lstm", None)
        if isinstance(lstm, torch.nn.LSTM):
            # what a DNI criterion needs to size its synthesizer (fairseq builds the criterion after the model)
            projection = getattr(model.decoder, "output_projection", None)
            self.recurrent_state_dims = {
                "layers": lstm.num_layers, "hidden": lstm.hidden_size, "embed": lstm.input_size,
                # size of a token's label vector (its output-layer row; the embedding with adaptive softmax)
                "label": projection.in_features if projection is not None else lstm.input_size}
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        mode = getattr(optimizer, "dni_mode", None)  # set by --lr-scheduler cosine_alternating
        if mode is not None and hasattr(criterion, "set_mode"):
            criterion.set_mode(mode)
        loss, sample_size, logging_output = super().train_step(
            sample, model, criterion, optimizer, update_num, ignore_grad)
        after_backward = getattr(criterion, "after_backward", None)
        if after_backward is not None:
            # the gradient on the window's initial state exists only now; it is still multiplied
            # by the fp16/AMP loss scale, which only the optimizer knows
            after_backward(loss_scale=current_loss_scale(optimizer), valid=not ignore_grad)
        if world_size() > 1:
            share_training_state(model.decoder, criterion)
        return loss, sample_size, logging_output

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

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary
