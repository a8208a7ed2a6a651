"""The carried state: windows joined by it behave exactly like one long window; who writes it; validation
and AMP retries leave the training streams' state as it was."""
import types

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

from helpers import USER_DIR, assert_same_weights, build_model, fairseq, train_args, train_inner
from fairseq_dni.data.stream_windows import StreamWindows
from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel, DNILSTMLMConfig


def build(vocab=30, **overrides):
    dictionary = Dictionary()
    for i in range(vocab):
        dictionary.add_symbol(f"w{i}")
    cfg = DNILSTMLMConfig(decoder_embed_dim=8, decoder_hidden_size=12, decoder_layers=2, dropout=0.0, **overrides)
    torch.manual_seed(0)
    model = DNILSTMLanguageModel.build_model(cfg, types.SimpleNamespace(target_dictionary=dictionary))
    return model.double().eval(), len(dictionary)


def log_probs(model, tokens, **kw):
    out = model(tokens, **kw)
    return model.get_normalized_probs(out, log_probs=True)


@pytest.mark.parametrize("overrides", [{}, {"share_decoder_input_output_embed": True},
                                       {"decoder_out_embed_dim": 5}])
def test_two_windows_with_carried_state_equal_one_long_window(overrides):
    model, vocab = build(**overrides)
    tokens = torch.randint(4, vocab, (3, 11))
    whole = log_probs(model, tokens, state_key="s", reset_state=True)
    first = log_probs(model, tokens[:, :6], state_key="s", reset_state=True)
    second = log_probs(model, tokens[:, 6:], state_key="s", reset_state=False)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=0, atol=1e-12)


def test_reset_and_missing_key_start_from_zeros_and_keys_do_not_mix():
    model, vocab = build()
    a, b = torch.randint(4, vocab, (2, 2, 5))
    fresh = log_probs(model, b, state_key="train", reset_state=True)
    log_probs(model, a, state_key="train", reset_state=True)      # train state now carries a
    log_probs(model, a, state_key="valid", reset_state=True)      # a validation pass in between
    carried = log_probs(model, b, state_key="train")              # continues train, not valid
    expected = log_probs(model, torch.cat([a, b], 1), state_key="x", reset_state=True)[:, 5:]
    torch.testing.assert_close(carried, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(carried, fresh)
    # no key (a stock fairseq task): stateless, every call from zeros
    torch.testing.assert_close(log_probs(model, b), fresh, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_probs(model, b), fresh, rtol=0, atol=1e-12)


def test_batch_shape_change_resets_and_state_is_detached_and_follows_dtype():
    model, vocab = build()
    model.train()
    tokens = torch.randint(4, vocab, (3, 4))
    model(tokens, state_key="train", reset_state=True)
    h, c = model.decoder.carried.peek("train")
    assert not h.requires_grad and not c.requires_grad  # no gradient crosses a window boundary
    out, extra = model(tokens[:2], state_key="train")    # 3 -> 2 streams: start from zeros
    assert extra["start_state"][0].abs().sum() == 0
    model.float()
    out, extra = model(tokens[:2], state_key="train")
    assert extra["start_state"][0].dtype == torch.float32 and extra["start_state"][0].abs().sum() > 0


def test_carried_state_survives_a_state_dict_round_trip():
    model, vocab = build()
    tokens = torch.randint(4, vocab, (2, 9))
    model(tokens[:, :4], state_key="train", reset_state=True)
    clone, _ = build()
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(log_probs(clone, tokens[:, 4:], state_key="train"),
                               log_probs(model, tokens[:, 4:], state_key="train"), rtol=0, atol=1e-12)


def test_adaptive_softmax_scores_every_token():
    model, vocab = build(vocab=60, adaptive_softmax_cutoff="20,40", adaptive_softmax_factor=2.0)
    tokens = torch.randint(4, vocab, (2, 5))
    lp = log_probs(model, tokens, state_key="s", reset_state=True)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 5, dtype=lp.dtype), rtol=0, atol=1e-10)


def test_validation_mid_epoch_does_not_disturb_the_training_streams(tiny_data, tmp_path):
    """Validating every 7 updates (its own streams, its own carried state) changes no weight."""
    fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "plain", "--max-epoch", "1"))
    out = fairseq("fairseq-train", *train_args(tiny_data, tmp_path / "val", "--max-epoch", "1",
                                               "--validate-interval-updates", "7"))
    assert out.count('"valid_loss"') > 5
    assert_same_weights(tmp_path / "plain" / "checkpoint_last.pt", tmp_path / "val" / "checkpoint_last.pt")


def test_stock_task_with_our_arch_trains_statelessly(tiny_data, tmp_path):
    """fairseq's language_modeling task gives no state_key: every window starts from zeros and nothing is
    carried, so the checkpoint carries no state."""
    out = fairseq("fairseq-train", tiny_data, "--user-dir", USER_DIR, "--task", "language_modeling",
                  "--arch", "dni_lstm_lm_small", "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
                  "--tokens-per-sample", "8", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01",
                  "--max-update", "3", "--save-dir", tmp_path, "--cpu", "--num-workers", "0",
                  "--log-format", "json", "--log-interval", "1")
    assert len(train_inner(out)) == 3
    model = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    assert model["decoder.carried._extra_state"] == {"train": None}


def test_an_update_run_again_after_an_amp_overflow_starts_from_the_same_carried_state():
    """fairseq's --amp retries an overflowed update by running its window again (reseeded); the
    carried LSTM state and the synthesizer's carry (coordinate-wise: its own state, its last call,
    the pending pair) must be those of the update's start, so the retry computes exactly the same."""
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_dni.criterions.dni_cross_entropy import DNICrossEntropyConfig, DNICrossEntropyCriterion
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLMConfig
    from fairseq_dni.optim.alternating import AlternatingOptimizer
    from fairseq_dni.tasks.dni_language_modeling import DNILanguageModelingConfig, DNILanguageModelingTask

    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(f"w{i}")
    tokens = np.random.RandomState(1).randint(4, len(dictionary), size=300)
    windows = StreamWindows(tokens, 3, 6, dictionary.pad(), dictionary.eos(), state_key="train")
    samples = [windows.collater([windows[i]]) for i in range(4)]
    opt_cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), [
        "unused", "--task", "language_modeling", "--arch", "lstm_lm", "--optimizer", "alternating", "--lr", "0.01",
        "--dni-lr", "0.01", "--cpu"])).optimizer

    def run(schedule):
        torch.manual_seed(0)
        task = DNILanguageModelingTask(DNILanguageModelingConfig(), dictionary)
        model = build_model(task, DNILSTMLMConfig(decoder_embed_dim=4, decoder_hidden_size=5, dropout=0.0))
        criterion = DNICrossEntropyCriterion(task, DNICrossEntropyConfig(
            dni_synthesizer="coordinatewise", dni_synthesizer_hidden=3, sentence_avg=False))
        optimizer = AlternatingOptimizer(opt_cfg, list(model.parameters()) + list(criterion.parameters()))
        losses = []
        for k, (update, window) in enumerate(schedule):
            torch.manual_seed(100 + update)  # fairseq reseeds every update (retries included)
            optimizer.zero_grad()
            loss, _, _ = task.train_step(samples[window], model, criterion, optimizer, update)
            losses.append(float(loss))
            if (update, window) not in schedule[k + 1:]:  # the overflowed try takes no step
                optimizer.step()
        return losses, model.decoder.carried.peek("train"), criterion.carried.peek("train")

    plain = run([(0, 0), (1, 1), (2, 2), (3, 3)])
    retried = run([(0, 0), (1, 1), (2, 2), (2, 2), (3, 3)])  # update 2 run again, then stepped once
    assert retried[0][2] == retried[0][3] == plain[0][2] and retried[0][4] == plain[0][3]
    for a, b in zip(plain[1], retried[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(plain[2].own_state, retried[2].own_state, rtol=0, atol=0)


def test_a_checkpoint_field_this_version_dropped_is_ignored_on_load():
    """Checkpoints written while --dni-future-aux existed carry a pending pair with ``future_target``;
    they still resume (bitwise as before: the field was never read without that flag)."""
    from fairseq_dni.carried_state import from_plain, to_plain
    from fairseq_dni.criterions.dni_cross_entropy import PendingRegression, SynthesizerCall

    call = SynthesizerCall(torch.ones(2, 3), None, None)
    saved = to_plain(PendingRegression(call=call, target=torch.zeros(2, 3)))
    saved["future_target"] = torch.full((2, 3), 7.0)
    loaded = from_plain(saved, {"PendingRegression": PendingRegression, "SynthesizerCall": SynthesizerCall})
    assert isinstance(loaded, PendingRegression) and torch.equal(loaded.call.inputs, call.inputs)
    assert torch.equal(loaded.target, torch.zeros(2, 3))
