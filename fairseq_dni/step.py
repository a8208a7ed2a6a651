"""One truncated-BPTT training window, written once: the protocol between the task and a DNI criterion.

The task's ``train_step`` asks the optimizer for the window's mode and calls :func:`train_window`; so do
the tests and benchmarks that drive windows by hand. In reading order (the numbers are the comments in
:func:`train_window`):

1. state in: the model's carried state ``s_{t-1}`` (zeros when a pass opens), its DNI part made a leaf
   that requires grad (:func:`start_window`, ``CarriedLayout.with_grad``);
2. forward, 3. LM loss, 4. injection: the criterion's ``forward(model, sample, window=..., mode=...)``
   runs the model from that leaf, adds the regression loss of the pair whose target arrived last window,
   and in synthetic mode injects ``scale * M(s_t)`` at the window's final state (``fairseq_dni/dni.py``);
5. backward (fairseq's optimizer wrapper: loss scaling, fp16/AMP);
6. target: the gradient left on the leaf, unscaled, becomes the target of the synthesizer call made at
   ``s_{t-1}``, to be regressed next window (the criterion's :meth:`WindowCriterion.end_window`, which
   also writes what the criterion carries);
7. state out: the window's final state, detached, becomes the model's carry (written here, by the step,
   since the step handed the model its start state), and with several ranks every carried value is
   gathered for rank 0's checkpoint.

Any other criterion (``lm_cross_entropy``, ``cross_entropy``, ``adaptive_loss``) does 2, 3 and 5 only;
the model then reads and writes its own carry, as it does in validation and eval-lm.

Who owns what: the model owns its carried state (``decoder.carried``), the criterion the synthesizer's
(``criterion.carried``), the optimizer (``--optimizer alternating``) the mode and the LM's learning rate,
the step the order of the window. The task and the criterion never import each other: they share
:class:`WindowTask` / :class:`WindowCriterion` / :class:`Window` from here and
:class:`~fairseq_dni.carried_state.ModelSpec`.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from fairseq_dni.carried_state import ModelSpec, carried_states, world_size
from fairseq_dni.optim.alternating import current_loss_scale

try:  # fairseq's AMP wrapper; the step only needs its type
    from fairseq.optim.amp_optimizer import AMPOptimizer
except ImportError:  # pragma: no cover
    AMPOptimizer = ()

MODES = ("synthetic", "real")


def unwrap(module):
    """The module inside fairseq's distributed wrappers (which keep it as ``.module``)."""
    while isinstance(getattr(module, "module", None), torch.nn.Module):
        module = module.module
    return module


@dataclass
class Window:
    """One training window's boundary states, handed from the step to the criterion and back.

    ``start`` is the state the window starts from, its DNI part a leaf that requires grad (laid out as
    ``ModelSpec.layout`` says); ``continues`` says whether it was carried from the previous window (True)
    or is zeros (a pass opens, or nothing is carried yet): only a carried start's gradient is a target.
    The criterion's forward fills ``final`` (the window's final state, not detached: the step carries
    it) and ``criterion_carry`` (what the criterion carries on, completed by its ``end_window``)."""

    key: Optional[str]      # the stream set (the split), None: batches of a stock task
    streams: int            # B
    reset: bool             # the first window of a pass
    start: Any
    continues: bool
    final: Any = None
    criterion_carry: Any = None


class WindowTask:
    """What a DNI criterion needs of the task that builds it: the model's :class:`ModelSpec`, set when the
    task builds the model (fairseq builds the criterion after the model, from the task)."""

    model_spec: Optional[ModelSpec] = None


class WindowCriterion:
    """A criterion that trains through :func:`train_window`: its training forward takes the
    :class:`Window` and the mode as arguments (it keeps no mode between windows), and
    :meth:`end_window` runs after backward."""

    def forward(self, model, sample, reduce=True, window: Optional[Window] = None, mode: Optional[str] = None):
        raise NotImplementedError

    def end_window(self, window: Window, loss_scale: float = 1.0, valid: bool = True):
        """After backward: read the gradient on ``window.start`` (scaled by ``loss_scale``); ``valid``
        False when fairseq discards this window's gradients (``ignore_grad``)."""
        raise NotImplementedError


def start_window(decoder, sample, training: bool = True) -> Window:
    """1. state in: the carried state of the sample's stream set (``state_key``, ``reset_state`` of its
    ``net_input``), or zeros; when ``training``, its DNI part made a leaf that requires grad (the decoder's
    ``state_layout.with_grad``: all of the LSTM's (h, c), the QRNN's cell states)."""
    net_input = sample["net_input"]
    key, reset = net_input.get("state_key"), bool(net_input.get("reset_state", False))
    streams = net_input["src_tokens"].size(0)
    start = decoder.carried_or_zeros(streams, key, reset)
    if training:
        start = decoder.state_layout.with_grad(start)
    return Window(key=key, streams=streams, reset=reset, start=start,
                  continues=decoder.carried.has(key, streams) and not reset)


def train_window(model, criterion, sample, optimizer, mode: Optional[str], ignore_grad: bool = False):
    """One training window over this rank's B streams (one fairseq micro-batch); fairseq's
    ``(loss, sample_size, logging_output)``.

    ``optimizer``: anything with fairseq's ``backward(loss)`` (its loss scale, if any, is read as
    ``current_loss_scale`` does); ``mode``: ``synthetic`` or ``real`` (the optimizer's
    ``begin_window``), None without ``--optimizer alternating`` (refused by a DNI criterion);
    ``ignore_grad``: fairseq's, the window's gradients are discarded (and no target is taken).
    """
    dni = unwrap(criterion)
    if not isinstance(dni, WindowCriterion):  # the model carries its own state
        with torch.autograd.profiler.record_function("forward"):
            with torch.autocast("cuda", enabled=isinstance(optimizer, AMPOptimizer)):
                loss, sample_size, logging_output = criterion(model, sample)
        if ignore_grad:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        share_across_ranks(model, criterion)
        return loss, sample_size, logging_output

    decoder = unwrap(model).decoder
    window = start_window(decoder, sample)                                                  # 1 state in
    with torch.autograd.profiler.record_function("forward"):
        with torch.autocast("cuda", enabled=isinstance(optimizer, AMPOptimizer)):
            loss, sample_size, logging_output = criterion(model, sample, window=window, mode=mode)  # 2, 3, 4
    if ignore_grad:
        loss *= 0
    with torch.autograd.profiler.record_function("backward"):
        optimizer.backward(loss)                                                            # 5 backward
    dni.end_window(window, loss_scale=current_loss_scale(optimizer), valid=not ignore_grad)  # 6 target
    decoder.carried.set(window.key, window.streams, window.final)                           # 7 state out
    share_across_ranks(model, criterion)
    return loss, sample_size, logging_output


def share_across_ranks(model, criterion):
    """With several ranks, every rank's carried values gathered onto every rank (rank 0 checkpoints them)."""
    if world_size() > 1:
        for carried in carried_states(model, criterion):
            carried.share_across_ranks()


class Backward:
    """fairseq's ``optimizer.backward`` outside fairseq (tests, benchmarks): ``loss * loss_scale``
    backward, with the scale where :func:`~fairseq_dni.optim.alternating.current_loss_scale` reads it."""

    class _Scaler:
        def __init__(self, loss_scale):
            self.loss_scale = loss_scale

    def __init__(self, loss_scale: float = 1.0):
        self.scaler = Backward._Scaler(loss_scale) if loss_scale != 1.0 else None

    def backward(self, loss):
        (loss * self.scaler.loss_scale if self.scaler else loss).backward()
