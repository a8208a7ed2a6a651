"""dni_cross_entropy through stock fairseq-train / fairseq-eval-lm on tiny generated data."""
import torch

from conftest import USER_DIR, fairseq, train_args, train_inner

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
                                               "--log-interval", "10", *DNI, "--dni-condition-on-next-input", "--dni-condition-on-next-target",
                                               "--dni-future-aux", "0.5"))
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
