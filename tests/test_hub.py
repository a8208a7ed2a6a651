"""The hub interface (fairseq_dni/hub_interface.py) on a model trained by the custom-corpus recipe.

* the recipe (sacremoses + sentencepiece + binarize + train + eval-lm) runs on generated raw text;
* the hub encodes raw sentences exactly as the training data was encoded, its perplexity over the
  raw test sentences equals fairseq-eval-lm's, the state is carried, sampling is reproducible;
* bad input: nothing to score, empty sentences, out-of-range sampling arguments and beam search
  give a clear error before the carried state moves; top-k beyond the vocabulary means no cut.
"""
import math
import re
import shutil

import pytest

from helpers import fairseq
from test_recipes import run_recipe


def write_raw_text(path, lines, seed):
    """Raw English-like sentences with capitals and punctuation for sacremoses to split."""
    import random

    rng = random.Random(seed)
    words = ["cat", "dog", "sat", "on", "the", "mat", "ran", "home", "quickly", "and", "slept", "it's", "big"]
    with open(path, "w") as f:
        for _ in range(lines):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
            f.write(sentence.capitalize() + rng.choice([".", "!", "?", ", then."]) + "\n")


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("custom")
    write_raw_text(work / "raw.txt", 600, seed=1)
    write_raw_text(work / "test.txt", 12, seed=2)
    out = run_recipe("custom_corpus", "--text", str(work / "raw.txt"), "--test", str(work / "test.txt"),
                     "--vocab-size", "60", "--cpu", "--size", "smoke", "--out", str(work / "out"))
    assert re.search(r"custom test perplexity \(fairseq-eval-lm, smoke\): [0-9.]+", out)
    return work


def test_custom_corpus_rerun_keeps_its_data_bin_and_new_text_replaces_it(custom_model, tmp_path):
    """A rerun on the same text (a second arm, a resumed run, one started at once) re-encodes it
    identically and keeps the binarization other runs may be reading; different text replaces both."""
    out = tmp_path / "out"
    shutil.copytree(custom_model / "out", out, symlinks=True)
    args = ["--test", str(custom_model / "test.txt"), "--vocab-size", "60", "--cpu", "--size", "smoke",
            "--out", str(out), "--dry-run"]
    dict_txt = out / "data-bin-smoke" / "dict.txt"
    before = dict_txt.stat().st_ino
    run_recipe("custom_corpus", "--text", str(custom_model / "raw.txt"), *args)
    assert dict_txt.stat().st_ino == before and not (out / "encoded.new").exists()
    write_raw_text(custom_model / "other.txt", 600, seed=3)
    run_recipe("custom_corpus", "--text", str(custom_model / "other.txt"), *args)
    assert dict_txt.stat().st_ino != before and not (out / "encoded.new").exists()


def test_custom_corpus_hub_scores_like_eval_lm(custom_model):
    """The hub re-encodes the raw test sentences itself (moses + sentencepiece); with the state
    carried across them its perplexity is fairseq-eval-lm's over the binarized test split (1 stream)."""
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel

    ckpt = custom_model / "out" / "checkpoints-smoke"
    assert (ckpt / "dict.txt").exists() and (ckpt / "sentencepiece.bpe.model").exists()
    out = fairseq("fairseq-eval-lm", custom_model / "out" / "data-bin-smoke", "--user-dir", "fairseq_dni",
                  "--task", "dni_language_modeling", "--path", ckpt / "checkpoint_last.pt", "--gen-subset", "test",
                  "--batch-size", "1", "--tokens-per-sample", "7", "--cpu", "--num-workers", "0")
    eval_ppl = float(re.search(r"Perplexity: ([0-9.]+)", out).group(1))

    lm = DNILSTMLanguageModel.from_pretrained(str(ckpt), "checkpoint_last.pt")
    raw = (custom_model / "test.txt").read_text().splitlines()
    encoded = (custom_model / "out" / "encoded" / "test.txt").read_text().splitlines()
    assert [lm.apply_bpe(lm.tokenize(s)) for s in raw] == encoded  # one pipeline for corpus and hub
    assert lm.perplexity(raw) == pytest.approx(eval_ppl, abs=0.006)

    # the state is carried: the second sentence scores differently after the first than after reset()
    lm.reset()
    after_first = lm.score(raw[:2])[1]["score"]
    lm.reset()
    alone = lm.score(raw[1])[0]["score"]
    assert after_first != pytest.approx(alone, abs=1e-6)


def test_custom_corpus_hub_samples_reproducibly(custom_model):
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel

    lm = DNILSTMLanguageModel.from_pretrained(str(custom_model / "out" / "checkpoints-smoke"))
    first = lm.sample("The cat", max_len=12, seed=7)
    lm.reset()
    assert lm.sample("The cat", max_len=12, seed=7) == first
    assert first.startswith("The cat")
    with pytest.raises(ValueError):
        lm.sample("The cat", temperature=0)


@pytest.fixture(scope="module")
def hub(custom_model):
    from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel

    return DNILSTMLanguageModel.from_pretrained(str(custom_model / "out" / "checkpoints-smoke"))


def fresh_score(lm, sentence):
    lm.reset()
    return lm.score(sentence)[0]["positional_scores"].tolist()


def test_perplexity_of_nothing_is_a_clear_error(hub):
    hub.reset()
    with pytest.raises(ValueError, match="no sentences given"):
        hub.perplexity([])
    with pytest.raises(ValueError, match="encodes to no tokens"):
        hub.perplexity("")
    assert hub.score([]) == []  # one result per sentence: none


@pytest.mark.parametrize("empty", ["", "   ", "\u200b"])
def test_a_sentence_that_encodes_to_nothing_is_refused_before_the_state_moves(hub, empty):
    reference = fresh_score(hub, "The dog ran home.")
    hub.reset()
    with pytest.raises(ValueError, match=r"sentence 1 .* encodes to no tokens"):
        hub.score(["The cat sat on the mat.", empty])
    # the first sentence was not scored either: the stream is where reset() left it
    assert hub.score("The dog ran home.")[0]["positional_scores"].tolist() == reference


def test_topk_beyond_the_vocabulary_is_no_cut(hub):
    draws = {}
    for topk in (0, len(hub.src_dict), 10**6):
        hub.reset()
        draws[topk] = hub.sample("The cat", max_len=15, topk=topk, seed=3)
    assert draws[10**6] == draws[len(hub.src_dict)] == draws[0]


def test_topk_one_is_greedy(hub):
    draws = set()
    for seed in (1, 2, 3):
        hub.reset()
        draws.add(hub.sample("The cat", max_len=8, topk=1, seed=seed))
    assert len(draws) == 1


@pytest.mark.parametrize("kwargs,error,message", [
    ({"temperature": 0}, ValueError, "temperature must be a finite number > 0"),
    ({"temperature": -1.0}, ValueError, "temperature must be a finite number > 0"),
    ({"temperature": math.nan}, ValueError, "temperature must be a finite number > 0"),
    ({"temperature": math.inf}, ValueError, "temperature must be a finite number > 0"),
    ({"max_len": 0}, ValueError, "max_len must be an integer >= 1"),
    ({"max_len": 2.5}, ValueError, "max_len must be an integer >= 1"),
    ({"topk": 2.5}, ValueError, "topk must be an integer"),
    ({"prefix": ["The cat", "A dog"]}, TypeError, "prefix must be a str"),
    ({"top_k": 5}, TypeError, "unexpected keyword argument 'top_k'"),  # a misspelt option is not ignored
])
def test_bad_sampling_arguments_are_refused_before_the_state_moves(hub, kwargs, error, message):
    reference = fresh_score(hub, "The dog ran home.")
    hub.reset()
    with pytest.raises(error, match=message):
        hub.sample(**{"prefix": "The cat", **kwargs})
    assert hub.score("The dog ran home.")[0]["positional_scores"].tolist() == reference


@pytest.mark.parametrize("method", ["generate", "translate"])
def test_beam_search_is_refused_with_the_entry_points_to_use(hub, method):
    with pytest.raises(NotImplementedError, match=r"use sample\(prefix, \.\.\.\) or score\(sentences\)"):
        getattr(hub, method)("The cat")
