"""--optimizer alternating: its two parts, under fairseq's fp16 / bf16 / AMP wrappers (CPU stand-ins), and
what it refuses (another base optimizer on resume; a stock optimizer with dni_cross_entropy).

The wrappers are built the way fairseq's trainer builds them; only the parts that need CUDA
(flat fp16 master weights, fp16 kernels) cannot run here.
"""
import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.optim.fp16_optimizer import FP16Optimizer, MemoryEfficientFP16Optimizer

import fairseq_dni  # noqa: F401  (registers --optimizer alternating)
from helpers import alternating_args, fairseq, run_alternating, train_args, train_inner
from fairseq_dni.optim.alternating import (
    AlternatingOptimizer,
    Clock,
    current_loss_scale,
    find_alternating,
    optimizer_kind,
)
from fairseq_dni.optim.lr_scheduler.cosine_alternating import CosineAlternatingSchedule


def config(*extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "unused-data", "--task", "language_modeling", "--arch", "lstm_lm", "--optimizer", "alternating",
        "--lr", "0.5", "--dni-lr", "0.25", "--base-optimizer", "sgd", "--dni-optimizer", "sgd", "--cpu", *extra])
    return convert_namespace_to_omegaconf(args)


def params(dtype=torch.float32):
    lm = [torch.nn.Parameter(torch.ones(3, dtype=dtype)), torch.nn.Parameter(torch.ones(2, dtype=dtype))]
    synth = [torch.nn.Parameter(torch.ones(4, dtype=dtype))]
    for p in synth:
        p.param_group = "synthesizer"
    return lm, synth


def fill_grads(ps, value):
    for p in ps:
        p.grad = torch.full_like(p, value)


def test_plain_alternating_steps_each_part_with_its_own_lr_and_clips_only_the_lm():
    cfg = config("--clip-norm", "1.0")
    lm, synth = params()
    opt = AlternatingOptimizer(cfg.optimizer, lm + synth)
    fill_grads(lm + synth, 2.0)
    norm = opt.clip_grad_norm(1.0)
    assert norm == pytest.approx((5 * 4.0) ** 0.5)          # the LM's norm only
    opt.step()
    lm_scale = 1.0 / (5 * 4.0) ** 0.5                       # clipped LM grads: 2 * 1/|g|
    assert lm[0][0].item() == pytest.approx(1 - 0.5 * 2 * lm_scale)
    assert synth[0][0].item() == pytest.approx(1 - 0.25 * 2)   # synthesizer: not clipped, own lr
    opt.set_lr(0.1)
    assert opt.get_lr() == 0.1 and opt.optimizer.synthesizer.param_groups[0]["lr"] == 0.25


def test_fp16_wrapper_without_flattening_keeps_the_synthesizer_apart():
    cfg = config("--fp16", "--fp16-no-flatten-grads", "--fp16-init-scale", "64")
    lm, synth = params(torch.float16)
    wrapped = FP16Optimizer.build_optimizer(cfg, lm + synth)
    inner = find_alternating(wrapped)
    assert isinstance(inner, AlternatingOptimizer) and len(inner.synthesizer_params) == 1
    assert current_loss_scale(wrapped) == 64.0
    # the schedule, built on the wrapper as fairseq builds it, attaches itself to the inner optimizer
    schedule = CosineAlternatingSchedule(config("--lr-scheduler", "cosine_alternating", "--first-mode", "real",
                                                "--lr-period-updates", "4").lr_scheduler, wrapped)
    assert inner.schedule is schedule and inner.begin_window(Clock(0, 0.0)) == "real"
    wrapped.zero_grad()  # fairseq's trainer starts every step here (sets the 1/scale factor)
    loss = (sum(p.float().sum() for p in lm) + 3 * synth[0].float().sum())
    wrapped.backward(loss)  # scaled by 64 inside
    # what fairseq's trainer does next: normalise by the sample size, clip, step
    wrapped.multiply_grads(1.0)
    wrapped.clip_grad_norm(0.0)
    wrapped.step()
    assert lm[0][0].item() == pytest.approx(1 - 0.5 * 1.0, abs=1e-3)
    assert synth[0][0].item() == pytest.approx(1 - 0.25 * 3.0, abs=1e-3)


def test_bf16_wrapper_has_no_loss_scale():
    cfg = config("--bf16", "--fp16-no-flatten-grads")
    lm, synth = params(torch.bfloat16)
    wrapped = FP16Optimizer.build_optimizer(cfg, lm + synth)
    assert find_alternating(wrapped) is not None
    assert current_loss_scale(wrapped) == 1.0


def test_amp_wrapper():
    cfg = config("--amp")
    lm, synth = params()
    with pytest.warns(UserWarning):  # torch's CUDA GradScaler is disabled on CPU
        wrapped = AMPOptimizer.build_optimizer(cfg, lm + synth)
    assert find_alternating(wrapped) is not None
    wrapped.backward(sum(p.sum() for p in lm + synth))
    wrapped.step()
    assert synth[0][0].item() == pytest.approx(1 - 0.25)


def test_memory_efficient_fp16_is_refused_clearly():
    cfg = config("--memory-efficient-fp16")
    lm, synth = params(torch.float16)
    with pytest.raises(ValueError, match="Unsupported optimizer: AlternatingOptimizer"):
        MemoryEfficientFP16Optimizer.build_optimizer(cfg, lm + synth)


def test_optimizer_state_round_trip_restores_both_parts():
    cfg = config()
    lm, synth = params()
    opt = AlternatingOptimizer(cfg.optimizer, lm + synth)
    state = opt.state_dict()
    assert set(state) == {"lm", "synthesizer"}
    other = AlternatingOptimizer(cfg.optimizer, lm + synth)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="not written by --optimizer alternating"):
        other.load_state_dict({"state": {}, "param_groups": []})


def test_every_base_optimizer_change_is_refused_on_load():
    """adam/adamw/sgd/nag are told apart from their saved state alone (also in checkpoints written
    before the kind was checked), and any change between them is refused in fairseq's words."""
    kinds = ["adam", "adamw", "sgd", "nag"]
    states = {}
    for kind in kinds:
        lm, synth = params()
        states[kind] = AlternatingOptimizer(config("--base-optimizer", kind).optimizer, lm + synth)
        assert optimizer_kind(states[kind].state_dict()["lm"]) == kind
    for saved in kinds:
        for current in kinds:
            if saved == current:
                states[current].load_state_dict(states[saved].state_dict())
                continue
            with pytest.raises(ValueError, match=f"Optimizer does not match; please reset the optimizer "
                                                 rf"\(--reset-optimizer\). The checkpoint's --base-optimizer is "
                                                 f"{saved}, this run's is {current}"):
                states[current].load_state_dict(states[saved].state_dict())


@pytest.mark.parametrize("before,after", [("adam", "sgd"), ("sgd", "nag")])  # a KeyError; silently plain SGD
def test_resuming_with_another_base_optimizer_says_reset_the_optimizer(tiny_data, tmp_path, before, after):
    """fairseq compares only the optimizer's class (here always 'alternating'); we compare the base
    optimizers, and say it as fairseq does, in one line, before any update."""
    short = ("--lr-period-updates", "3", "--warmup-updates", "0")  # a cycle that fits the 3 updates
    run_alternating(tiny_data, tmp_path, "--max-update", "3", "--base-optimizer", before, *short)
    out = fairseq("fairseq-train", *alternating_args(tiny_data, tmp_path, "--max-update", "6",
                                                     "--base-optimizer", after, *short), check=False)
    assert ("fairseq-dni: error: Optimizer does not match; please reset the optimizer (--reset-optimizer). "
            f"The checkpoint's --base-optimizer is {before}, this run's is {after}") in out
    assert "Traceback" not in out
    if before == "adam":  # the way out fairseq names works (it also restarts the update count)
        resumed = fairseq("fairseq-train", *alternating_args(tiny_data, tmp_path, "--max-update", "6",
                                                             "--base-optimizer", after, "--reset-optimizer", *short))
        assert "Loaded checkpoint" in resumed and len(train_inner(resumed)) == 6


def test_a_stock_optimizer_with_the_dni_criterion_is_refused_in_one_line(tiny_data, tmp_path):
    """With --optimizer adam the synthesizer's gradient would enter the LM's clipped norm (and its
    optimizer): refused before the first update, nothing written."""
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, "--criterion", "dni_cross_entropy",
                                               "--clip-norm", "0.05", "--max-update", "3"),
                  check=False)
    assert "fairseq-dni: error: --criterion dni_cross_entropy trains its synthesizer with its own optimizer" in out
    assert "Traceback" not in out and not list(tmp_path.glob("*.pt"))


def test_the_optimizer_answers_each_windows_mode_and_sets_its_learning_rate():
    """begin_window is the one place the task reads the mode: --dni-mode when no schedule decides (the rate
    left alone), else the schedule's mode and rate at the clock (here the epoch clock, restated by hand:
    cycles of 2 epochs, synthetic first, cosine from 0.5 to 0)."""
    import math

    from fairseq_dni.errors import DNIUserError

    lm, synth = params()
    fixed = AlternatingOptimizer(config("--dni-mode", "real").optimizer, lm + synth)
    assert fixed.begin_window(Clock(7, 1.5)) == "real" and fixed.get_lr() == 0.5
    assert AlternatingOptimizer(config().optimizer, lm + synth).begin_window(Clock(0, 0.0)) == "synthetic"

    cfg = config("--lr-scheduler", "cosine_alternating", "--lr-period-epochs", "2", "--max-epoch", "6")
    opt = AlternatingOptimizer(cfg.optimizer, lm + synth)
    schedule = CosineAlternatingSchedule(cfg.lr_scheduler, opt)
    assert opt.schedule is schedule
    for epoch, mode in ((0.0, "synthetic"), (0.5, "synthetic"), (1.75, "synthetic"), (2.0, "real"), (3.5, "real"),
                        (4.25, "synthetic")):
        assert opt.begin_window(Clock(update=123, epoch=epoch)) == mode
        assert opt.get_lr() == pytest.approx(0.25 * (1 + math.cos(math.pi * (epoch % 2) / 2)), abs=1e-15)

    conflict = config("--dni-mode", "real", "--lr-scheduler", "cosine_alternating", "--lr-period-updates", "4")
    with pytest.raises(DNIUserError, match="--dni-mode real disagrees with --lr-scheduler cosine_alternating "
                                           "--mode-schedule alternate"):
        CosineAlternatingSchedule(conflict.lr_scheduler, AlternatingOptimizer(conflict.optimizer, lm + synth))
