"""The carried state: windows joined by it behave exactly like one long window."""
import types

import pytest
import torch
from fairseq.data import Dictionary

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
