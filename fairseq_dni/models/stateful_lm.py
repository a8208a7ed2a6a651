"""What fairseq-dni's recurrent language models share: a decoder whose state flows across windows.

``dni_lstm_lm`` (``models/dni_lstm_lm.py``) and ``dni_qrnn_lm`` (``models/dni_qrnn_lm.py``) are the same
model around different recurrent layers: token embedding (``--decoder-embed-dim``, embedding dropout
``--decoder-embed-dropout``), input / between-layer / output dropouts (``--locked-dropout``: one mask per
stream and window, AWD-LSTM's), the layers (each subclass's :meth:`StatefulDecoder.build_layers` and
:meth:`StatefulDecoder.run_layers`), an optional projection, the output layer (tied with
``--share-decoder-input-output-embed``, or an adaptive softmax), and the carried state:

The final state of a window is kept (``decoder.carried``, a :class:`~fairseq_dni.carried_state.CarriedState`),
detached, as the start state of the next window of the same stream set (``state_key``: the task passes the
split name, so a validation pass in the middle of an epoch never disturbs the training streams).
``reset_state`` (first window of a pass), a new batch shape, or no ``state_key`` at all (any stock fairseq
task) start from zeros. Who writes the carry: the model itself when it read it (validation, eval-lm, the
hub, any criterion but ``dni_cross_entropy``); the training step (``fairseq_dni/step.py``) when it handed
the model a start state. How the state is laid out, and which part of it DNI reads, is the decoder's
``state_layout`` (a :class:`~fairseq_dni.carried_state.CarriedLayout`).
"""
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel
from fairseq.modules import AdaptiveSoftmax

from fairseq_dni.carried_state import CarriedLayout, CarriedState, ModelSpec, tree_leaves, tree_replace_leaves
from fairseq_dni.errors import DNIUserError
from fairseq_dni.modules import LockedDropout, check_rate, embedding_dropout
from fairseq_dni.run_checks import check_vocabulary

# a model's recurrent state, laid out as its decoder's ``state_layout`` says
State = Tuple


@dataclass
class StatefulLMConfig(FairseqDataclass):
    """The flags every recurrent LM of the plugin takes (fairseq's LSTM LM's names where it has one)."""

    decoder_embed_dim: int = field(default=650, metadata={"help": "token embedding dimension"})
    decoder_hidden_size: int = field(default=650, metadata={"help": "hidden size of each recurrent layer"})
    decoder_layers: int = field(default=2, metadata={"help": "number of stacked recurrent layers"})
    decoder_out_embed_dim: Optional[int] = field(
        default=None,
        metadata={"help": "dimension fed to the output layer; a linear projection maps the hidden "
                          "size to it when they differ (default: the embedding dim when embeddings "
                          "are shared, else the hidden size)"},
    )
    dropout: float = field(default=0.5, metadata={"help": "default for every dropout below left unset"})
    decoder_dropout_in: Optional[float] = field(
        default=None, metadata={"help": "dropout on the embedded inputs of the first recurrent layer"})
    decoder_hidden_dropout: Optional[float] = field(
        default=None, metadata={"help": "dropout between stacked recurrent layers"})
    decoder_dropout_out: Optional[float] = field(
        default=None, metadata={"help": "dropout on the last recurrent layer's outputs"})
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
        metadata={"help": "DropConnect on every layer's recurrent weights (the LSTM's hidden-to-hidden weights, "
                          "the QRNN's gate matrix): each weight zeroed with this probability, one mask per window "
                          "(AWD-LSTM's --wdrop)"},
    )
    decoder_last_layer_out_dim: bool = field(
        default=False,
        metadata={"help": "the last recurrent layer is as wide as the output layer's input (--decoder-out-embed-dim; "
                          "the embedding dim with --share-decoder-input-output-embed) instead of "
                          "--decoder-hidden-size plus a projection (AWD-LSTM's shape: its output feeds tied "
                          "embeddings directly)"},
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


class StatefulLanguageModel(FairseqLanguageModel):
    """A fairseq LM around a :class:`StatefulDecoder`: the hub and the vocabulary check."""

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="checkpoint_last.pt", data_name_or_path=".",
                        tokenizer="moses", bpe="sentencepiece", sentencepiece_model=None, **kwargs):
        """A hub interface (fairseq_dni/hub_interface.py) that scores and samples raw text with the
        recurrent state carried across calls. ``model_name_or_path`` is a folder holding the
        checkpoint, and (by default) dict.txt and sentencepiece.bpe.model, as
        recipes/custom_corpus.sh leaves them; tokenizer/bpe None for pre-tokenized text. Any of the
        plugin's models loads through any of their classes (fairseq builds the checkpoint's arch)."""
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


def check_rates(cfg: StatefulLMConfig):
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


def rate(cfg: StatefulLMConfig, value: Optional[float]) -> float:
    """A dropout flag's value, ``--dropout`` where it is left unset."""
    return cfg.dropout if value is None else value


def dropout_module(cfg: StatefulLMConfig, value: Optional[float]) -> nn.Module:
    """The dropout of rate ``rate(cfg, value)``: locked (one mask per stream and window) with
    ``--locked-dropout``, else ``nn.Dropout`` (one mask per token)."""
    return (LockedDropout if cfg.locked_dropout else nn.Dropout)(rate(cfg, value))


class StatefulDecoder(FairseqIncrementalDecoder):
    """The shared decoder (module docstring). A subclass builds its layers in :meth:`build_layers`
    (returning its state's layout) and runs them in :meth:`run_layers`."""

    def __init__(self, cfg: StatefulLMConfig, dictionary):
        super().__init__(dictionary)
        check_rates(cfg)
        vocab, pad = len(dictionary), dictionary.pad()
        embed_dim, hidden, layers = cfg.decoder_embed_dim, cfg.decoder_hidden_size, cfg.decoder_layers
        if layers < 1:
            raise DNIUserError(f"--decoder-layers must be >= 1, got {layers}")
        out_dim = cfg.decoder_out_embed_dim or (embed_dim if cfg.share_decoder_input_output_embed else hidden)
        widths = (hidden,) * (layers - 1) + (out_dim if cfg.decoder_last_layer_out_dim else hidden,)

        self.padding_idx = pad
        self.embed_dropout = cfg.decoder_embed_dropout
        self.embed_tokens = nn.Embedding(vocab, embed_dim, padding_idx=pad)
        self.dropout_in = dropout_module(cfg, cfg.decoder_dropout_in)
        self.state_layout: CarriedLayout = self.build_layers(cfg, embed_dim, widths)
        self.dropout_out = dropout_module(cfg, cfg.decoder_dropout_out)
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

        # the state carried per stream set, detached: no gradient crosses a window; the training
        # streams' state travels in checkpoints (see fairseq_dni/carried_state.py)
        self.carried = CarriedState()

    # ---- the layers: each model's own -----------------------------------------------------------
    def build_layers(self, cfg: StatefulLMConfig, embed_dim: int, widths: Tuple[int, ...]) -> CarriedLayout:
        """Build the recurrent layers (input ``embed_dim``, layer ``l`` of width ``widths[l]``); return the
        layout of their carried state."""
        raise NotImplementedError

    def run_layers(self, x: torch.Tensor, state: State):
        """The layers over one window: x (B, T, E) (after the input dropout) -> (last layer's output
        (B, T, width_L), final state)."""
        raise NotImplementedError

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

    # ---- forward -------------------------------------------------------------------------
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
            cached = self.get_incremental_state(incremental_state, "recurrent_state")
            if cached is not None:
                src_tokens = src_tokens[:, -1:]
                start_state = self.state_from_cache(cached)
        if start_state is None:
            start_state = self.carried_or_zeros(src_tokens.size(0), state_key, reset_state)

        x = embedding_dropout(self.embed_tokens, src_tokens, self.embed_dropout, self.training)
        raw_output, final_state = self.run_layers(self.dropout_in(x), start_state)
        dropped_output = self.dropout_out(raw_output)
        x = dropped_output if self.project_out is None else self.project_out(dropped_output)

        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "recurrent_state", self.state_to_cache(final_state))
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
            first and last recurrent states (laid out as ``self.state_layout`` says), not detached;
            ``extra["raw_output"]`` and ``extra["dropped_output"]`` are the last recurrent layer's outputs
            (B, T, width_L) before and after its output dropout (AWD-LSTM's ``raw_output`` /
            ``dropped_rnn_hs``, what AR and TAR regularise).
        """
        x, extra = self.extract_features(src_tokens, state_key, reset_state, incremental_state, start_state)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    # ---- incremental decoding (fairseq's sequence generator) --------------------------------
    def state_to_cache(self, state: State) -> Dict[str, torch.Tensor]:
        """The state as fairseq's incremental-state dict: its tensors, in ``tree_leaves`` order."""
        return {f"state{i}": t for i, t in enumerate(tree_leaves(state))}

    def state_from_cache(self, cached: Dict[str, torch.Tensor]) -> State:
        first = cached["state0"]
        template = self.state_layout.zeros(first.size(1), first)
        return tree_replace_leaves(template, [cached[f"state{i}"] for i in range(len(cached))])

    def reorder_incremental_state(self, incremental_state, new_order):
        cached = self.get_incremental_state(incremental_state, "recurrent_state")
        if cached is None:
            return
        reordered = {k: v.index_select(1, new_order) for k, v in cached.items()}  # every tensor: streams on dim 1
        self.set_incremental_state(incremental_state, "recurrent_state", reordered)

    def max_positions(self):
        return int(1e6)  # the state carries context; windows can be any length


# ---- named architectures ------------------------------------------------------------------
def set_defaults(args, **values):
    """Set ``values`` only where the command line left a value unset (fairseq's convention for named
    architectures)."""
    for name, value in values.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
