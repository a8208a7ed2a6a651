"""Synthesizers: small modules that predict dLoss_future/d(state) at a window's end.

torch only (no fairseq import; the scan synthesizer's CPU kernel is one C++ file that torch's
``cpp_extension`` builds). A synthesizer is any :class:`Synthesizer`: the criterion knows this
interface, not the classes. Three implementations:

* ``mlp`` (:class:`~fairseq_dni.synthesizers.mlp.MLPSynthesizer`): Jaderberg et al. (2016)'s
  feed-forward synthesizer over the whole flattened state, optionally conditioned (cDNI).
* ``coordinatewise`` (:class:`~fairseq_dni.synthesizers.coordinatewise.CoordinatewiseSynthesizer`):
  the seed paper's (Shang & Zhang, arXiv 1902.10630): every scalar coordinate of the state goes
  through one small shared recurrent network whose own state is carried across windows (its
  ``--sgtype GRU/LSTM``).
* ``scan`` (:class:`~fairseq_dni.synthesizers.scan.ScanSynthesizer`): the seed paper's ``--sgtype
  QRNN`` as its code computes it, one QRNN scan across all B x D scalars of the state.

All three start with an exactly-zero output (their last layer is zero-initialised; ``scan`` with
``init="paper"`` takes the paper's initialisation instead), so training starts as plain TBPTT.
"""
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn


class Synthesizer(nn.Module):
    """Interface. Shapes: ``state`` (B, D) is the LSTM's flattened state of B streams
    (:meth:`fairseq_dni.carried_state.StateLayout.flatten`); ``condition`` (B, C) or None;
    ``own_state`` whatever :meth:`initial_own_state` returns (None for a stateless synthesizer).
    The prediction is (B, D), in the units of the target it is regressed onto (the gradient of
    the summed future loss of each stream, see ``fairseq_dni/dni.py``)."""

    #: size C of the condition vector it takes (0: none)
    condition_dim: int = 0
    #: standard deviation of the multiplicative input noise in training (--dni-input-noise; 0: none)
    input_noise: float = 0.0

    def initial_own_state(self, state: torch.Tensor) -> Any:
        """Its own state for fresh streams whose LSTM state is ``state`` (B, D) (None: it has none)."""
        return None

    def perturb(self, state: torch.Tensor) -> torch.Tensor:
        """The input it is fed during training: ``state`` (B, D) times noise drawn from N(1, input_noise)
        per element (the seed paper's coordinate-wise synthesizer; none when 0 or in evaluation). The
        criterion keeps what this returned so that the prediction it regresses later is the one it
        injected."""
        if self.training and self.input_noise > 0:
            return state * torch.empty_like(state).normal_(1.0, self.input_noise)
        return state

    def forward(self, state: torch.Tensor, condition: Optional[torch.Tensor] = None,
                own_state: Any = None) -> Tuple[torch.Tensor, Any]:
        """(prediction (B, D), its new own state)."""
        raise NotImplementedError


READS_SCALARS = {"coordinatewise": "coordinate-wise synthesizer sees one state coordinate at a time",
                 "scan": "scan synthesizer reads the state's scalars one by one"}


def build_synthesizer(kind: str, layout, *, hidden: Optional[int] = None, layers: Optional[int] = None,
                      condition_dim: int = 0, input_norm: bool = True, cell: Optional[str] = None,
                      input_noise: Optional[float] = None, init: Optional[str] = None,
                      per_stream: bool = False) -> Synthesizer:
    """The synthesizer called ``kind`` for a state laid out as ``layout`` (a CarriedLayout: it reads the
    flat DNI vector's size ``dim``, its ``slices`` (mlp) and ``join_order`` (scan)).

    None takes the synthesizer's own default: ``mlp`` 2 layers of width 256 (width 0: the state
    size), no input noise; ``coordinatewise`` 1 recurrent layer of 50 units, noise N(1, 0.5)
    (the seed paper's ``--sg_hidden_num 50 --sg_nlayers 1``); ``scan`` the same, zoneout 0.1.
    ``init`` (``scan`` only): ``zero`` (default: the last layer starts at zero) or ``paper``
    (U(-0.1, 0.1) decoder weights); ``per_stream`` (``scan`` only): one scan per stream. Raises
    ValueError for a setting that does not apply (the criterion turns it into a one-line user error)."""
    from fairseq_dni.synthesizers.coordinatewise import CELLS, CoordinatewiseSynthesizer
    from fairseq_dni.synthesizers.mlp import MLPSynthesizer
    from fairseq_dni.synthesizers.scan import INITS, ScanSynthesizer

    if input_noise is not None and input_noise < 0:
        raise ValueError(f"--dni-input-noise must be >= 0, got {input_noise}")
    if layers is not None and layers < 1:
        raise ValueError(f"--dni-synthesizer-layers must be >= 1, got {layers}")
    if kind != "scan":
        for flag, given in (("--dni-synthesizer-init", init is not None), ("--dni-scan-per-stream", per_stream)):
            if given:
                raise ValueError(f"{flag} applies to --dni-synthesizer scan only, not {kind}")
    if kind == "mlp":
        if cell is not None:
            raise ValueError("--dni-synthesizer-cell applies to --dni-synthesizer coordinatewise only, not mlp")
        hidden = 256 if hidden is None else hidden
        if hidden < 0:
            raise ValueError(f"--dni-synthesizer-hidden must be >= 1 (or 0: the state size), got {hidden}")
        return MLPSynthesizer(layout.dim, hidden_dim=hidden or layout.dim, num_layers=layers or 2,
                              condition_dim=condition_dim, slices=layout.slices if input_norm else (),
                              input_noise=input_noise or 0.0)
    if kind in ("coordinatewise", "scan"):  # the seed paper's: one small recurrent network over scalars
        hidden = 50 if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"--dni-synthesizer-hidden must be >= 1, got {hidden}")
        if condition_dim:
            raise ValueError(f"the {READS_SCALARS[kind]} and takes no condition: drop --dni-condition-on-next-input/"
                             "--dni-condition-on-next-target, or use --dni-synthesizer mlp")
        input_noise = 0.5 if input_noise is None else input_noise
        if kind == "scan":
            if cell is not None:
                raise ValueError("--dni-synthesizer-cell applies to --dni-synthesizer coordinatewise only; "
                                 "scan is the paper's QRNN")
            init = "zero" if init is None else init
            if init not in INITS:
                raise ValueError(f"unknown --dni-synthesizer-init {init!r}; choose one of {', '.join(INITS)}")
            return ScanSynthesizer(layout.join_order, hidden=hidden, layers=layers or 1, input_noise=input_noise,
                                   init=init, per_stream=per_stream)
        cell = "gru" if cell is None else cell
        if cell not in CELLS:
            raise ValueError(f"unknown --dni-synthesizer-cell {cell!r}; choose one of {', '.join(CELLS)}")
        return CoordinatewiseSynthesizer(hidden=hidden, layers=layers or 1, cell=cell, input_noise=input_noise)
    raise ValueError(f"unknown synthesizer {kind!r}; choose mlp, coordinatewise or scan")
