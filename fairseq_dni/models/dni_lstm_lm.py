"""Model ``dni_lstm_lm``: an LSTM language model whose state flows across windows.

One ``torch.nn.LSTM`` call per window (cuDNN on GPU, one fused kernel per layer),
not fairseq's per-time-step ``LSTMCell`` loop. The final (h, c) of a window is
kept, detached, as the initial state of the next window of the same stream set
(``state_key``: the task passes the split name, so a validation pass in the
middle of an epoch never disturbs the training streams). ``reset_state`` (first
window of a pass), a new batch shape, or no ``state_key`` at all (any stock
fairseq task) start from zeros.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from fairseq.modules import AdaptiveSoftmax

from fairseq_dni.carried_state import CarriedState, StateLayout
from fairseq_dni.errors import DNIUserError

logger = logging.getLogger(__name__)

State = Tuple[torch.Tensor, torch.Tensor]  # (h, c), each (layers, batch, hidden); see StateLayout


@dataclass(frozen=True)
class RecurrentInterface:
    """What a DNI criterion needs to know of the model to build its synthesizer."""

    layout: StateLayout  # the carried state's layout and flat size
    embed_dim: int       # size of a token's input embedding (--dni-condition-on-next-input)
    label_dim: int       # size of a token's label vector: its output-layer row (the embedding with adaptive softmax)
    adaptive_softmax: bool = False  # the output layer is an adaptive softmax (only some criteria can train it)

@dataclass
class DNILSTMLMConfig(FairseqDataclass):
    decoder_embed_dim: int = field(default=650, metadata={"help": "token embedding dimension"})
    decoder_hidden_size: int = field(default=650, metadata={"help": "LSTM hidden size (h and c)"})
    decoder_layers: int = field(default=2, metadata={"help": "number of stacked LSTM layers"})
    decoder_out_embed_dim: Optional[int] = field(
        default=None,
        metadata={"help": "dimension fed to the output layer; a linear projection maps the hidden "
                          "size to it when they differ (default: the embedding dim when embeddings "
                          "are shared, else the hidden size)"},
    )
    dropout: float = field(default=0.5, metadata={"help": "default for every dropout below left unset"})
    decoder_dropout_in: Optional[float] = field(
        default=None, metadata={"help": "dropout on the embedded inputs of the first LSTM layer"})
    decoder_hidden_dropout: Optional[float] = field(
        default=None, metadata={"help": "dropout between stacked LSTM layers"})
    decoder_dropout_out: Optional[float] = field(
        default=None, metadata={"help": "dropout on the last LSTM layer's outputs"})
    decoder_embed_dropout: float = field(
        default=0.0,
        metadata={"help": "embedding dropout: drop whole word types from the embedding matrix "
                          "for one window (Gal & Ghahramani 2016)"},
    )
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "tie the input embedding and the output layer weights"})
    adaptive_softmax_cutoff: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated adaptive softmax cutoffs, e.g. 20000,60000 "
                          "(train with --criterion adaptive_loss)"},
    )
    adaptive_softmax_dropout: float = field(
        default=0.0, metadata={"help": "dropout inside the adaptive softmax tail projections"})
    adaptive_softmax_factor: float = field(
        default=4.0, metadata={"help": "dimension shrink factor between adaptive softmax clusters"})
    init_range: float = field(
        default=0.1, metadata={"help": "embeddings and output layer start uniform in [-r, r]"})


@register_model("dni_lstm_lm", dataclass=DNILSTMLMConfig)
class DNILSTMLanguageModel(FairseqLanguageModel):
    @classmethod
    def build_model(cls, cfg: DNILSTMLMConfig, task):
        return cls(DNILSTMDecoder(cfg, task.target_dictionary))

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="checkpoint_last.pt", data_name_or_path=".",
                        tokenizer="moses", bpe="sentencepiece", sentencepiece_model=None, **kwargs):
        """A hub interface (fairseq_dni/hub_interface.py) that scores and samples raw text with the
        recurrent state carried across calls. ``model_name_or_path`` is a folder holding the
        checkpoint, and (by default) dict.txt and sentencepiece.bpe.model, as
        recipes/custom_corpus.sh leaves them; tokenizer/bpe None for pre-tokenized text."""
        import os

        from fairseq import hub_utils

        from fairseq_dni.hub_interface import DNILMHubInterface, build_text_pipeline

        if bpe == "sentencepiece" and sentencepiece_model is None:
            sentencepiece_model = os.path.join(model_name_or_path, "sentencepiece.bpe.model")
        loaded = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path, **kwargs)
        tok, sub = build_text_pipeline(tokenizer, bpe, sentencepiece_model)
        return DNILMHubInterface(loaded["args"], loaded["task"], loaded["models"], tokenizer=tok, bpe=sub)


class DNILSTMDecoder(FairseqIncrementalDecoder):
    def __init__(self, cfg: DNILSTMLMConfig, dictionary):
        super().__init__(dictionary)
        vocab, pad = len(dictionary), dictionary.pad()
        embed_dim, hidden = cfg.decoder_embed_dim, cfg.decoder_hidden_size
        out_dim = cfg.decoder_out_embed_dim or (embed_dim if cfg.share_decoder_input_output_embed else hidden)

        def rate(value):
            return cfg.dropout if value is None else value

        self.padding_idx = pad
        self.embed_dropout = cfg.decoder_embed_dropout
        self.embed_tokens = nn.Embedding(vocab, embed_dim, padding_idx=pad)
        self.dropout_in = nn.Dropout(rate(cfg.decoder_dropout_in))
        self.lstm = nn.LSTM(
            embed_dim, hidden, num_layers=cfg.decoder_layers, batch_first=True,
            dropout=rate(cfg.decoder_hidden_dropout) if cfg.decoder_layers > 1 else 0.0,
        )
        self.dropout_out = nn.Dropout(rate(cfg.decoder_dropout_out))
        self.project_out = nn.Linear(hidden, out_dim, bias=False) if out_dim != hidden else None

        self.adaptive_softmax = None
        self.output_projection = None
        if cfg.adaptive_softmax_cutoff:
            if cfg.share_decoder_input_output_embed:
                raise DNIUserError("--share-decoder-input-output-embed cannot be combined with --adaptive-softmax-cutoff")
            cutoff = utils.eval_str_list(cfg.adaptive_softmax_cutoff, type=int)
            if list(cutoff) != sorted(set(cutoff)) or cutoff[0] < 1 or cutoff[-1] >= vocab:
                raise DNIUserError(
                    f"--adaptive-softmax-cutoff {cfg.adaptive_softmax_cutoff}: cutoffs must increase and stay below "
                    f"the vocabulary size ({vocab} types in dict.txt); for a small vocabulary drop the adaptive "
                    f"softmax (e.g. --arch dni_lstm_lm instead of dni_lstm_lm_wikitext103, or "
                    f"--adaptive-softmax-cutoff with smaller values)")
            self.adaptive_softmax = AdaptiveSoftmax(
                vocab, out_dim, cutoff,
                dropout=cfg.adaptive_softmax_dropout, factor=cfg.adaptive_softmax_factor,
            )
        else:
            if cfg.share_decoder_input_output_embed and out_dim != embed_dim:
                raise DNIUserError(
                    f"tied embeddings need --decoder-out-embed-dim ({out_dim}) == --decoder-embed-dim ({embed_dim})")
            self.output_projection = nn.Linear(out_dim, vocab)
            if cfg.share_decoder_input_output_embed:
                self.output_projection.weight = self.embed_tokens.weight

        nn.init.uniform_(self.embed_tokens.weight, -cfg.init_range, cfg.init_range)
        if self.output_projection is not None:
            nn.init.zeros_(self.output_projection.bias)
            if not cfg.share_decoder_input_output_embed:
                nn.init.uniform_(self.output_projection.weight, -cfg.init_range, cfg.init_range)

        self.state_layout = StateLayout((hidden,) * cfg.decoder_layers, stacked=True)
        # (h, c) carried per stream set, detached: no gradient crosses a window; the training
        # streams' state travels in checkpoints (see fairseq_dni/carried_state.py)
        self.carried = CarriedState()

    # ---- state ---------------------------------------------------------------------------
    def recurrent_interface(self) -> RecurrentInterface:
        projection = self.output_projection
        return RecurrentInterface(
            layout=self.state_layout, embed_dim=self.embed_tokens.embedding_dim,
            label_dim=projection.in_features if projection is not None else self.embed_tokens.embedding_dim,
            adaptive_softmax=self.adaptive_softmax is not None)

    def zero_state(self, batch_size: int) -> State:
        return self.state_layout.zeros(batch_size, self.lstm.weight_hh_l0)

    def initial_state(self, batch_size: int, state_key: Optional[str], reset_state: bool) -> State:
        """The state a window starts from: the carried one (in the parameters' dtype and device,
        e.g. after .half() or .cuda()), or zeros when there is none to carry."""
        weight = self.lstm.weight_hh_l0
        carried = self.carried.get(state_key, batch_size, reset_state, device=weight.device, dtype=weight.dtype)
        return self.zero_state(batch_size) if carried is None else carried

    def upgrade_state_dict_named(self, state_dict, name):
        """Checkpoints of fairseq-dni 0.1.0 kept the carried state in the decoder's own extra state."""
        old = f"{name}._extra_state" if name else "_extra_state"
        if old in state_dict:
            legacy = state_dict.pop(old) or {}
            train = (legacy.get("carry_state") or {}).get("train")
            state_dict[f"{name}.carried._extra_state" if name else "carried._extra_state"] = {
                "train": None if train is None else (int(train[0].size(1)), tuple(train))}

    # ---- forward -------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight
        if self.training and self.embed_dropout > 0:
            keep = weight.new_empty((weight.size(0), 1)).bernoulli_(1 - self.embed_dropout)
            weight = weight * keep / (1 - self.embed_dropout)
        return F.embedding(tokens, weight, self.padding_idx)

    def extract_features(
        self,
        src_tokens: torch.Tensor,
        state_key: Optional[str] = None,
        reset_state: bool = False,
        incremental_state: Optional[Dict[str, Dict[str, Optional[torch.Tensor]]]] = None,
        initial_state: Optional[State] = None,
    ):
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "lstm_state")
            if cached is not None:
                src_tokens = src_tokens[:, -1:]
                initial_state = (cached["h"], cached["c"])
        if initial_state is None:
            initial_state = self.initial_state(src_tokens.size(0), state_key, reset_state)

        x = self.dropout_in(self.embed(src_tokens))
        x, final_state = self.lstm(x, initial_state)
        x = self.dropout_out(x)
        if self.project_out is not None:
            x = self.project_out(x)

        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "lstm_state", {"h": final_state[0], "c": final_state[1]})
        else:
            self.carried.set(state_key, src_tokens.size(0), final_state)
        # the un-detached states let a criterion reach the window's boundaries (DNI)
        return x, {"initial_state": initial_state, "final_state": final_state}

    def output_layer(self, features: torch.Tensor) -> torch.Tensor:
        if self.adaptive_softmax is not None:
            return features  # the adaptive softmax (criterion / get_normalized_probs) takes features
        return self.output_projection(features)

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_lengths: Optional[torch.Tensor] = None,
        state_key: Optional[str] = None,
        reset_state: bool = False,
        incremental_state=None,
        features_only: bool = False,
        initial_state: Optional[State] = None,
        **unused,
    ):
        """One window over B streams.

        Args:
            src_tokens: (B, T) input tokens.
            state_key: the stream set it continues (the task passes the split); None: start from zeros
                and carry nothing (a stock fairseq task).
            reset_state: start this stream set from zeros (the first window of a pass).
            initial_state: start from this state instead (the DNI criterion passes a leaf).

        Returns:
            ``(x, extra)``: x is (B, T, V) logits, or (B, T, d) features with ``features_only`` or an
            adaptive softmax; ``extra["initial_state"]`` and ``extra["final_state"]`` are the window's
            first and last LSTM states (laid out as ``self.state_layout`` says), not detached.
        """
        x, extra = self.extract_features(src_tokens, state_key, reset_state, incremental_state, initial_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def reorder_incremental_state(self, incremental_state, new_order):
        cached = self.get_incremental_state(incremental_state, "lstm_state")
        if cached is None:
            return
        reordered = {k: v.index_select(1, new_order) for k, v in cached.items()}
        self.set_incremental_state(incremental_state, "lstm_state", reordered)

    def max_positions(self):
        return int(1e6)  # the state carries context; windows can be any length


# ---- named architectures ------------------------------------------------------------------
# defaults are set only where the command line left a value unset (fairseq's convention)
def _defaults(args, **values):
    for name, value in values.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


# ``--arch dni_lstm_lm`` itself is registered with the model and takes DNILSTMLMConfig's
# defaults: Zaremba et al.'s 'medium' PTB LSTM, 2 x 650, dropout 0.5.


@register_model_architecture("dni_lstm_lm", "dni_lstm_lm_small")
def dni_lstm_lm_small(args):
    """Zaremba et al.'s 'small' PTB LSTM: 2 x 200, no dropout (the setting of the DNI stability study)."""
    _defaults(args, decoder_embed_dim=200, decoder_hidden_size=200, decoder_layers=2, dropout=0.0)


@register_model_architecture("dni_lstm_lm", "dni_lstm_lm_wikitext103")
def dni_lstm_lm_wikitext103(args):
    """WikiText-103 (267k types): 2 x 1024 LSTM, 512-d projection, adaptive softmax 20k/60k."""
    _defaults(
        args, decoder_embed_dim=512, decoder_hidden_size=1024, decoder_layers=2,
        decoder_out_embed_dim=512, dropout=0.1, adaptive_softmax_cutoff="20000,60000",
        adaptive_softmax_dropout=0.1,
    )
