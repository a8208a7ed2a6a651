"""Model ``dni_lstm_lm``: an LSTM language model whose state flows across windows.

One ``torch.nn.LSTM`` call per window (cuDNN on GPU, one fused kernel per layer),
not fairseq's per-time-step ``LSTMCell`` loop. The final (h, c) of a window is
kept (``decoder.carried``), detached, as the start state of the next window of the
same stream set (``state_key``: the task passes the split name, so a validation
pass in the middle of an epoch never disturbs the training streams). ``reset_state``
(first window of a pass), a new batch shape, or no ``state_key`` at all (any stock
fairseq task) start from zeros. Who writes the carry: the model itself when it read
it (validation, eval-lm, the hub, any criterion but ``dni_cross_entropy``); the
training step (``fairseq_dni/step.py``) when it handed the model a start state.

AWD-LSTM (Merity et al. 2018, ``salesforce/awd-lstm-lm``; the regularisers live in
``fairseq_dni/modules/``): ``--weight-drop`` (DropConnect on the hidden-to-hidden weights,
one mask per window, still one fused LSTM call), ``--locked-dropout`` (the input, between-layer
and output dropouts draw one mask per stream and window), ``--decoder-embed-dropout`` and
``--decoder-last-layer-out-dim`` (the last layer as wide as the embedding, so it can be tied).
The plain model keeps one stacked ``torch.nn.LSTM`` (parameters ``lstm.*``); layers of unequal
widths, or locked dropout between layers, run one single-layer LSTM per layer (``lstms.{l}.*``)
and carry the state as per-layer (h, c) pairs (``StateLayout(stacked=False)``).
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from fairseq.modules import AdaptiveSoftmax

from fairseq_dni.carried_state import CarriedState, ModelSpec, StateLayout
from fairseq_dni.errors import DNIUserError
from fairseq_dni.modules import LockedDropout, WeightDropLSTM, check_rate, embedding_dropout
from fairseq_dni.run_checks import check_vocabulary

logger = logging.getLogger(__name__)

# (h, c), each (layers, batch, hidden) (stacked); or ((h_0, c_0), (h_1, c_1), ...), each (1, batch, width_l)
# (layers apart); see StateLayout
State = Tuple


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
                          "for one window (Gal & Ghahramani 2016; AWD-LSTM's --dropoute)"},
    )
    locked_dropout: bool = field(
        default=False,
        metadata={"help": "the input, between-layer and output dropouts draw one mask per stream and window, the "
                          "same at every time step (variational/locked dropout, AWD-LSTM), instead of one per token"},
    )
    weight_drop: float = field(
        default=0.0,
        metadata={"help": "DropConnect on every layer's hidden-to-hidden weights: each weight zeroed with this "
                          "probability, one mask per window (AWD-LSTM's --wdrop)"},
    )
    decoder_last_layer_out_dim: bool = field(
        default=False,
        metadata={"help": "the last LSTM layer is as wide as the output layer's input (--decoder-out-embed-dim; the "
                          "embedding dim with --share-decoder-input-output-embed) instead of --decoder-hidden-size "
                          "plus a projection (AWD-LSTM's shape: its output feeds tied embeddings directly)"},
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

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq's, after refusing in one line weights trained with another dictionary (run_checks.py)."""
        embedding = state_dict.get("decoder.embed_tokens.weight")
        check_vocabulary(None if embedding is None else int(embedding.size(0)), len(self.decoder.dictionary))
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


def check_rates(cfg: DNILSTMLMConfig):
    """Every dropout-like rate of ``cfg`` in [0, 1), else DNIUserError (raised before anything is built)."""
    for flag, value in (("--dropout", cfg.dropout), ("--decoder-dropout-in", cfg.decoder_dropout_in),
                        ("--decoder-hidden-dropout", cfg.decoder_hidden_dropout),
                        ("--decoder-dropout-out", cfg.decoder_dropout_out),
                        ("--decoder-embed-dropout", cfg.decoder_embed_dropout), ("--weight-drop", cfg.weight_drop),
                        ("--adaptive-softmax-dropout", cfg.adaptive_softmax_dropout)):
        if value is not None:
            try:
                check_rate(flag, value)
            except ValueError as e:
                raise DNIUserError(str(e)) from None


class DNILSTMDecoder(FairseqIncrementalDecoder):
    def __init__(self, cfg: DNILSTMLMConfig, dictionary):
        super().__init__(dictionary)
        check_rates(cfg)
        vocab, pad = len(dictionary), dictionary.pad()
        embed_dim, hidden, layers = cfg.decoder_embed_dim, cfg.decoder_hidden_size, cfg.decoder_layers
        if layers < 1:
            raise DNIUserError(f"--decoder-layers must be >= 1, got {layers}")
        out_dim = cfg.decoder_out_embed_dim or (embed_dim if cfg.share_decoder_input_output_embed else hidden)
        widths = (hidden,) * (layers - 1) + (out_dim if cfg.decoder_last_layer_out_dim else hidden,)

        def rate(value):
            return cfg.dropout if value is None else value

        dropout = LockedDropout if cfg.locked_dropout else nn.Dropout
        self.padding_idx = pad
        self.embed_dropout = cfg.decoder_embed_dropout
        self.embed_tokens = nn.Embedding(vocab, embed_dim, padding_idx=pad)
        self.dropout_in = dropout(rate(cfg.decoder_dropout_in))
        if len(set(widths)) == 1 and not (cfg.locked_dropout and layers > 1):
            # one stacked LSTM (its between-layer dropout is nn.LSTM's own, a new mask per token)
            self.lstm = WeightDropLSTM(
                embed_dim, widths[0], num_layers=layers, batch_first=True,
                dropout=rate(cfg.decoder_hidden_dropout) if layers > 1 else 0.0, weight_drop=cfg.weight_drop)
            self.lstms, self.hidden_dropout = None, None
        else:
            # the layers apart: unequal widths, or locked dropout between them
            self.lstm = None
            self.lstms = nn.ModuleList(
                WeightDropLSTM(embed_dim if l == 0 else widths[l - 1], width, batch_first=True,
                               weight_drop=cfg.weight_drop) for l, width in enumerate(widths))
            self.hidden_dropout = dropout(rate(cfg.decoder_hidden_dropout))
        self.dropout_out = dropout(rate(cfg.decoder_dropout_out))
        self.project_out = nn.Linear(widths[-1], out_dim, bias=False) if out_dim != widths[-1] else None

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

        self.state_layout = StateLayout(widths, stacked=self.lstm is not None)
        # (h, c) carried per stream set, detached: no gradient crosses a window; the training
        # streams' state travels in checkpoints (see fairseq_dni/carried_state.py)
        self.carried = CarriedState()

    # ---- state ---------------------------------------------------------------------------
    def model_spec(self) -> ModelSpec:
        """What a DNI criterion needs to know of this model (read by the task in ``build_model``)."""
        projection = self.output_projection
        return ModelSpec(
            layout=self.state_layout, embed_dim=self.embed_tokens.embedding_dim,
            label_dim=projection.in_features if projection is not None else self.embed_tokens.embedding_dim,
            adaptive_softmax=self.adaptive_softmax is not None)

    def zero_state(self, batch_size: int) -> State:
        return self.state_layout.zeros(batch_size, self.embed_tokens.weight)

    def carried_or_zeros(self, batch_size: int, state_key: Optional[str], reset_state: bool) -> State:
        """The state a window of ``state_key``'s streams starts from: the carried one (in the parameters'
        dtype and device, e.g. after .half() or .cuda()), or zeros when there is none to carry."""
        weight = self.embed_tokens.weight
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
    def run_lstm(self, x: torch.Tensor, state: State):
        """The LSTM layers over one window: x (B, T, E) -> (last layer's output (B, T, width_L), final state)."""
        if self.lstm is not None:
            return self.lstm(x, state)
        final = []
        for l, lstm in enumerate(self.lstms):
            if l > 0:
                x = self.hidden_dropout(x)
            x, layer_state = lstm(x, state[l])
            final.append(layer_state)
        return x, tuple(final)

    def extract_features(
        self,
        src_tokens: torch.Tensor,
        state_key: Optional[str] = None,
        reset_state: bool = False,
        incremental_state: Optional[Dict[str, Dict[str, Optional[torch.Tensor]]]] = None,
        start_state: Optional[State] = None,
    ):
        carries_itself = start_state is None and incremental_state is None
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "lstm_state")
            if cached is not None:
                src_tokens = src_tokens[:, -1:]
                start_state = self.state_from_cache(cached)
        if start_state is None:
            start_state = self.carried_or_zeros(src_tokens.size(0), state_key, reset_state)

        x = embedding_dropout(self.embed_tokens, src_tokens, self.embed_dropout, self.training)
        raw_output, final_state = self.run_lstm(self.dropout_in(x), start_state)
        dropped_output = self.dropout_out(raw_output)
        x = dropped_output if self.project_out is None else self.project_out(dropped_output)

        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "lstm_state", self.state_to_cache(final_state))
        elif carries_itself:  # it read its own carry (eval-lm, validation, a plain criterion): it writes it
            self.carried.set(state_key, src_tokens.size(0), final_state)
        # (given a start state, the caller owns the carry: fairseq_dni.step.train_window writes it)
        # the un-detached states let a criterion reach the window's boundaries (DNI); the last
        # layer's outputs, its activation regularisers (AR/TAR)
        return x, {"start_state": start_state, "final_state": final_state,
                   "raw_output": raw_output, "dropped_output": dropped_output}

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
        start_state: Optional[State] = None,
        **unused,
    ):
        """One window over B streams.

        Args:
            src_tokens: (B, T) input tokens.
            state_key: the stream set it continues (the task passes the split); None: start from zeros
                and carry nothing (a stock fairseq task).
            reset_state: start this stream set from zeros (the first window of a pass).
            start_state: start from this state instead, and leave the carry to the caller
                (``fairseq_dni.step.train_window`` passes the carried state made a leaf, and writes
                the final state back itself). Without it the model reads and writes its own carry.

        Returns:
            ``(x, extra)``: x is (B, T, V) logits, or (B, T, d) features with ``features_only`` or an
            adaptive softmax; ``extra["start_state"]`` and ``extra["final_state"]`` are the window's
            first and last LSTM states (laid out as ``self.state_layout`` says), not detached;
            ``extra["raw_output"]`` and ``extra["dropped_output"]`` are the last LSTM layer's outputs
            (B, T, width_L) before and after its output dropout (AWD-LSTM's ``raw_output`` /
            ``dropped_rnn_hs``, what AR and TAR regularise).
        """
        x, extra = self.extract_features(src_tokens, state_key, reset_state, incremental_state, start_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def state_to_cache(self, state: State) -> Dict[str, torch.Tensor]:
        """The state as fairseq's incremental-state dict (h_l, c_l per layer; h, c when stacked)."""
        if self.state_layout.stacked:
            return {"h": state[0], "c": state[1]}
        return {f"{name}{l}": t for l, pair in enumerate(state) for name, t in zip("hc", pair)}

    def state_from_cache(self, cached: Dict[str, torch.Tensor]) -> State:
        if self.state_layout.stacked:
            return cached["h"], cached["c"]
        return tuple((cached[f"h{l}"], cached[f"c{l}"]) for l in range(len(self.state_layout.layer_sizes)))

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


@register_model_architecture("dni_lstm_lm", "dni_awd_lstm_lm")
def dni_awd_lstm_lm(args):
    """AWD-LSTM (Merity et al. 2018) as its PTB command runs it (``salesforce/awd-lstm-lm`` README:
    ``--dropouti 0.4 --dropouth 0.25``, defaults ``--dropout 0.4 --dropoute 0.1 --wdrop 0.5``,
    ``--emsize 400 --nhid 1150 --nlayers 3``, tied): 3 layers 1150/1150/400, 400-d tied embedding,
    locked dropout, weight drop. Its AR/TAR (``--alpha 2 --beta 1``) are criterion flags."""
    _defaults(
        args, decoder_embed_dim=400, decoder_hidden_size=1150, decoder_layers=3,
        share_decoder_input_output_embed=True, decoder_last_layer_out_dim=True, locked_dropout=True,
        dropout=0.4, decoder_dropout_in=0.4, decoder_hidden_dropout=0.25, decoder_dropout_out=0.4,
        decoder_embed_dropout=0.1, weight_drop=0.5,
    )


@register_model_architecture("dni_lstm_lm", "dni_awd_lstm_lm_small")
def dni_awd_lstm_lm_small(args):
    """dni_awd_lstm_lm's shape at CPU size: 3 layers 256/256/128, 128-d tied embedding, AWD-LSTM's PTB
    dropout rates halved (a smaller model trained for a few epochs; not tuned further): dropouti 0.2,
    dropouth 0.125, dropout 0.2, dropoute 0.05, wdrop 0.25. About 4.5 minutes of one core per PTB epoch
    at 20 x 35 tokens (docs/awd.md)."""
    _defaults(
        args, decoder_embed_dim=128, decoder_hidden_size=256, dropout=0.2, decoder_dropout_in=0.2,
        decoder_hidden_dropout=0.125, decoder_dropout_out=0.2, decoder_embed_dropout=0.05, weight_drop=0.25,
    )
    dni_awd_lstm_lm(args)
