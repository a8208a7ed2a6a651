"""dni_cross_entropy through stock fairseq-train / fairseq-eval-lm on tiny generated data."""
import pytest
import torch

from helpers import USER_DIR, fairseq, train_args, train_inner

DNI = ["--criterion", "dni_cross_entropy", "--optimizer", "alternating", "--dni-lr", "0.01"]


def params(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def same_lm(a, b):
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"] if torch.is_tensor(a["model"][k]))


def test_fresh_synthesizer_trains_like_real_mode_until_it_has_learned(tiny_data, tmp_path):
    """The synthesizer's last layer starts at zero and first regresses at window 3, so the
    first 3 updates are the same in synthetic mode, real mode and plain cross_entropy."""
    runs = {}
    for name, extra in [("ce", ["--criterion", "cross_entropy", "--optimizer", "alternating"]),
                        ("real", DNI + ["--dni-mode", "real"]),
                        ("syn", DNI + ["--dni-mode", "synthetic"])]:
        for updates in (3, 30):
            save = tmp_path / f"{name}{updates}"
            fairseq("fairseq-train", *train_args(tiny_data, save, "--max-update", updates, *extra))
            runs[name, updates] = params(save / "checkpoint_last.pt")
    assert same_lm(runs["ce", 3], runs["real", 3]) and same_lm(runs["real", 3], runs["syn", 3])
    assert same_lm(runs["ce", 30], runs["real", 30])       # real mode never injects
    assert not same_lm(runs["real", 30], runs["syn", 30])  # synthetic mode does, once M has learned
    # the synthesizer is trained in both modes and lives in the criterion, not in the LM
    assert runs["real", 30]["criterion"]["synthesizer.net.2.weight"].abs().sum() > 0
    assert not any(k.startswith("synthesizer") for k in runs["syn", 30]["model"])


def test_synthetic_run_logs_synthesizer_quality_and_scores_with_eval_lm(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, "--max-epoch", "2", "--update-freq", "2",
                                               "--log-interval", "10", *DNI, "--dni-condition-on-next-input", "--dni-condition-on-next-target"))
    logs = train_inner(out)
    for key in ("dni_loss", "dni_cos", "dni_rel_loss", "state_norm", "dni_pred_norm", "dni_target_norm", "dni_synthetic"):
        assert key in logs[-1], key
    assert float(logs[-1]["dni_synthetic"]) == 1
    assert float(logs[-1]["dni_nonfinite"]) == 0
    scored = fairseq("fairseq-eval-lm", tiny_data, "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                     "--path", tmp_path / "checkpoint_last.pt", "--batch-size", "2", "--tokens-per-sample", "9",
                     "--cpu", "--num-workers", "0")
    assert "Evaluated 257 tokens" in scored


def test_dni_criterion_refuses_a_task_without_carried_state(tiny_data, tmp_path):
    out = fairseq("fairseq-train", tiny_data, "--user-dir", USER_DIR, "--task", "language_modeling",
                  "--arch", "dni_lstm_lm_small", "--criterion", "dni_cross_entropy", "--batch-size", "2",
                  "--tokens-per-sample", "8", "--optimizer", "adam", "--lr", "0.01", "--max-update", "1",
                  "--save-dir", tmp_path, "--cpu", check=False)
    assert "dni_cross_entropy needs --task dni_language_modeling" in out


def test_a_stock_optimizer_with_the_dni_criterion_is_refused_in_one_line(tiny_data, tmp_path):
    """With --optimizer adam the synthesizer's gradient would enter the LM's clipped norm (and its
    optimizer): refused before the first update, nothing written."""
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, "--criterion", "dni_cross_entropy",
                                               "--clip-norm", "0.05", "--max-update", "3"),
                  check=False)
    assert "fairseq-dni: error: --criterion dni_cross_entropy trains its synthesizer with its own optimizer" in out
    assert "Traceback" not in out and not list(tmp_path.glob("*.pt"))


def test_real_mode_is_plain_tbptt_even_with_clipping(tiny_data, tmp_path):
    """dni_cross_entropy in real mode leaves the LM's update exactly as plain cross_entropy with the
    same optimizer: same logged gradient norm at every update, bitwise the same weights."""
    common = ["--optimizer", "alternating", "--base-optimizer", "adam", "--clip-norm", "0.05", "--max-update", "30"]
    ce = train_inner(fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "ce", *common,
                                                         "--criterion", "cross_entropy")))
    real = train_inner(fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "real", *common, *DNI,
                                                           "--dni-mode", "real", "--dni-lr", "0.01")))
    assert [r["gnorm"] for r in ce] == [r["gnorm"] for r in real]
    assert float(real[-1]["dni_loss"]) > 0  # the synthesizer did train meanwhile
    assert same_lm(params(tmp_path / "ce" / "checkpoint_last.pt"), params(tmp_path / "real" / "checkpoint_last.pt"))


@pytest.mark.parametrize("flags,message", [
    (["--dni-mode", "real", "--lr-scheduler", "cosine_alternating", "--lr-period-updates", "5"],
     "--dni-mode real disagrees with --lr-scheduler cosine_alternating --mode-schedule alternate"),
    (["--dni-synthesizer", "coordinatewise", "--dni-condition-on-next-target"],
     "--dni-condition-on-next-target applies to --dni-synthesizer mlp only"),
    (["--dni-synthesizer", "coordinatewise", "--dni-synthesizer-hidden", "0"], "--dni-synthesizer-hidden must be >= 1"),
    (["--dni-input-noise", "-1"], "--dni-input-noise must be >= 0"),
    (["--dni-lr", "-1"], "--dni-lr must be >= 0"),   # was torch's ValueError traceback
    (["--dni-scale", "-0.1"], "--dni-scale must be >= 0"),   # was accepted silently
    (["--dni-synthesizer-cell", "qrnn"], "--dni-synthesizer-cell applies to --dni-synthesizer coordinatewise only"),
])
def test_conflicting_or_inapplicable_dni_settings_are_one_line(tiny_data, tmp_path, flags, message):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path, *DNI, "--max-update", "2", *flags), check=False)
    assert f"fairseq-dni: error: {message}" in out
    assert "Traceback" not in out and not list(tmp_path.glob("*.pt"))


def test_dni_mode_that_agrees_with_the_schedule_runs(tiny_data, tmp_path):
    rows = train_inner(fairseq("fairseq-train", *train_args(
        tiny_data, tmp_path, *DNI, "--dni-mode", "real", "--lr-scheduler", "cosine_alternating",
        "--lr-period-updates", "5", "--mode-schedule", "real", "--max-update", "12")))
    assert len(rows) == 12 and all(float(r["dni_synthetic"]) == 0 for r in rows)
