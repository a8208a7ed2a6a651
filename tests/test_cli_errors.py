"""Bad input through stock fairseq-train: one line (``fairseq-dni: error: ...``), no traceback, nothing
written. One case per kind of mistake; the checks behind them are unit-tested beside their concept."""
import pytest

from helpers import DNI, SCHEDULED, USER_DIR, awd_train_args, fairseq, train_args


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "5000"], "fewer than the 5000 streams"),
    (["--lr-scheduler", "cosine_alternating", "--lr-period-updates", "-3"], "--lr-period-updates must be a positive"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tiny_data, tmp_path, extra, message):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "ckpt", "--max-update", "2", *extra), check=False)
    assert "fairseq-dni: error:" in out and message in out
    assert "Traceback" not in out
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_missing_data_directory_is_one_clear_line(tmp_path):
    out = fairseq("fairseq-train", tmp_path / "nowhere", "--user-dir", USER_DIR, "--task", "dni_language_modeling",
                  "--arch", "dni_lstm_lm_small", "--batch-size", "2", "--optimizer", "adam", "--lr", "0.1",
                  "--save-dir", tmp_path / "ckpt", "--cpu", check=False)
    assert "fairseq-dni: error: dni_language_modeling: no dictionary at" in out and "Traceback" not in out


def test_data_that_does_not_match_the_dictionary_is_refused(tiny_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    with open(bad / "dict.txt") as f:
        lines = f.readlines()
    with open(bad / "dict.txt", "w") as f:
        f.writelines(lines[:10])  # a dictionary too small for the binarized ids
    out = fairseq("fairseq-train", *train_args(bad, tmp_path / "ckpt", "--max-update", "2"), check=False)
    assert "data and dictionary do not match" in out and "Traceback" not in out


@pytest.mark.parametrize("args,message", [
    # an adaptive softmax whose cutoffs are not below the vocabulary (the WikiText-103 model on a small corpus)
    (["--arch", "dni_lstm_lm_wikitext103", "--criterion", "adaptive_loss"],
     "--adaptive-softmax-cutoff 20000,60000: cutoffs must increase and stay below the vocabulary size (56 types"),
    # an adaptive softmax with a criterion that cannot train it (an in-place autograd error at the first backward)
    (["--adaptive-softmax-cutoff", "20,40"], "--criterion cross_entropy cannot train an adaptive softmax"),
    # a stock fairseq model on our task (it would die on the 'state_key' keyword)
    (["--arch", "lstm_lm"], "--task dni_language_modeling feeds windows that continue a carried state"),
    (["--arch", "transformer_lm"], "TransformerLanguageModelConfig reads task.max_target_positions, which --task "
                                   "dni_language_modeling does not have"),
])
def test_combinations_that_cannot_work_are_one_line(tiny_data, tmp_path, args, message):
    command = train_args(tiny_data, tmp_path / "ckpt", "--max-update", "2", *args)
    if "transformer_lm" in args:  # our tiny sizes' flags are the LSTM's
        command = [a for a in command if a not in ("--decoder-hidden-size", "--decoder-embed-dim", "16")]
    out = fairseq("fairseq-train", *command, check=False)
    assert f"fairseq-dni: error: {message}" in out and "Traceback" not in out
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_dni_criterion_refuses_a_task_without_carried_state(tiny_data, tmp_path):
    out = fairseq("fairseq-train", tiny_data, "--user-dir", USER_DIR, "--task", "language_modeling",
                  "--arch", "dni_lstm_lm_small", "--criterion", "dni_cross_entropy", "--batch-size", "2",
                  "--tokens-per-sample", "8", "--optimizer", "adam", "--lr", "0.01", "--max-update", "1",
                  "--save-dir", tmp_path, "--cpu", check=False)
    assert "dni_cross_entropy needs --task dni_language_modeling" in out


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


@pytest.mark.parametrize("flags,message", [
    (["--lr-period-updates", "0"], "--lr-period-updates must be a positive integer"),
    (["--t-mult", "0"], "--t-mult must be an integer >= 1"),
    (["--mode-schedule", "sometimes"], "invalid choice"),
])
def test_impossible_schedule_is_a_clear_error(tiny_data, tmp_path, flags, message):
    args = train_args(tiny_data, tmp_path, *SCHEDULED, "--max-update", "2")
    out = fairseq("fairseq-train", *args, *flags, check=False)
    assert message in out


def test_variable_window_needs_a_window_that_can_vary(tiny_data, tmp_path):
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "c", "--variable-window", "--max-update", "2"),
                  check=False)
    assert "fairseq-dni: error: --variable-window needs --tokens-per-sample >= 10" in out and "Traceback" not in out
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())  # nothing written


EPOCH_SCHEDULE = ["--optimizer", "alternating", "--lr-scheduler", "cosine_alternating", "--max-epoch", "2"]


@pytest.mark.parametrize("flags,message", [
    (["--weight-drop", "1.0"], "--weight-drop must be in [0, 1), got 1.0"),
    (["--alpha", "-2"], "--alpha (the weight of AR) must be >= 0, got -2.0"),
    ([*EPOCH_SCHEDULE, "--lr-period-epochs", "1", "--lr-period-updates", "5"],
     "give the cosine cycles in updates (--lr-period-updates) or in epochs (--lr-period-epochs), not both"),
    ([*EPOCH_SCHEDULE, "--lr-period-epochs", "1", "--real-first-epochs", "2"],
     "--real-first-epochs 2 covers the whole run (--max-epoch 2)"),
    ([*EPOCH_SCHEDULE, "--lr-period-epochs", "5"],
     "the first cosine cycle (5 epochs) is longer than the run (--max-epoch 2)"),
])
def test_bad_awd_flags_are_one_line_and_write_nothing(tiny_data, tmp_path, flags, message):
    """Bad input through stock fairseq-train: one line each, no traceback, no checkpoint (one case per kind;
    every rate and weight is refused in test_awd.py's test_rates_outside_zero_one_are_refused /
    test_negative_ar_tar_weights_are_refused, every schedule in test_schedule.py, a window too short to
    vary above)."""
    out = fairseq("fairseq-train", *awd_train_args(tiny_data, tmp_path / "ckpt", "--max-update", "2", *flags),
                  check=False)
    assert f"fairseq-dni: error: {message}" in out and "Traceback" not in out
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())
