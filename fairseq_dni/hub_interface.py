"""Score and sample raw text with a trained dni_lstm_lm or dni_qrnn_lm, the way fairseq's hub models do.

    from fairseq_dni.models.dni_lstm_lm import DNILSTMLanguageModel
    lm = DNILSTMLanguageModel.from_pretrained("checkpoints", "checkpoint_last.pt",
                                              tokenizer="moses", bpe="sentencepiece")
    lm.score(["The cat sat on the mat .", "It was happy ."])   # state carried across the two
    lm.sample("The cat", max_len=20)                          # continues from the carried state
    lm.reset()                                                # start a new document

Raw sentences go through the same pipeline as the training corpus of
``recipes/custom_corpus.sh`` (sacremoses tokenizer, then the sentencepiece model), via
fairseq's own encoders (``build_text_pipeline``), so training data and hub inputs are
encoded by one piece of code. Like the corpus, the model reads one continuous stream: each
sentence is followed by ``</s>``, the first token of a sentence is predicted from the
previous sentence's ``</s>``, and the recurrent state runs on from one call to the next
until ``reset()``.
"""

import argparse
import math
import numbers
from typing import List, Optional, Union

import torch
from fairseq.data import encoders
from fairseq.hub_utils import GeneratorHubInterface

STATE_KEY = "hub"


def build_text_pipeline(tokenizer: Optional[str] = "moses", bpe: Optional[str] = "sentencepiece",
                        sentencepiece_model: Optional[str] = None, lang: str = "en"):
    """fairseq's tokenizer and subword encoders as used for training data and for the hub."""
    tok = None
    if tokenizer:
        tok = encoders.build_tokenizer(argparse.Namespace(
            tokenizer=tokenizer, source_lang=lang, target_lang=lang, moses_no_dash_splits=False,
            moses_no_escape=False))
    sub = None
    if bpe:
        if bpe == "sentencepiece" and not sentencepiece_model:
            raise ValueError("bpe='sentencepiece' needs sentencepiece_model=PATH (or the file "
                             "sentencepiece.bpe.model next to the checkpoint)")
        sub = encoders.build_bpe(argparse.Namespace(bpe=bpe, sentencepiece_model=sentencepiece_model,
                                                    sentencepiece_enable_sampling=False,
                                                    sentencepiece_alpha=None))
    return tok, sub


class DNILMHubInterface(GeneratorHubInterface):
    """A fairseq hub interface whose model keeps its recurrent state between calls."""

    def __init__(self, cfg, task, models, tokenizer=None, bpe=None):
        super().__init__(cfg, task, models)
        # fairseq builds these from cfg.tokenizer / cfg.bpe; explicit ones (from from_pretrained) win
        if tokenizer is not None:
            self.tokenizer = tokenizer
        if bpe is not None:
            self.bpe = bpe
        self.lm = self.models[0]
        self.lm.eval()
        self.reset()

    def reset(self):
        """Forget the carried state: the next sentence starts a new document."""
        self.lm.decoder.carried.pop(STATE_KEY)
        self._previous = self.src_dict.eos()  # the corpus convention: the stream opens after </s>

    def _advance(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run the LSTM over ``inputs`` (1-D) from the carried state; log-probs (T, V)."""
        first = STATE_KEY not in self.lm.decoder.carried.keys()
        net_output = self.lm(inputs.unsqueeze(0).to(self.device), state_key=STATE_KEY, reset_state=first)
        return self.lm.get_normalized_probs(net_output, log_probs=True)[0].float()

    def _encode_sentences(self, sentences: Union[str, List[str]], caller: str) -> List[torch.Tensor]:
        """Every sentence's ids followed by </s>, all encoded (and checked) before the state moves."""
        if isinstance(sentences, str):
            sentences = [sentences]
        encoded = []
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"{caller}: sentence {i} is a {type(sentence).__name__}, not a str")
            ids = self.encode(sentence)  # subword ids followed by </s>
            if len(ids) < 2:
                raise ValueError(f"{caller}: sentence {i} ({sentence!r}) encodes to no tokens; drop empty "
                                 "sentences (recipes/custom_corpus.sh drops empty lines from its corpus too)")
            encoded.append(ids)
        return encoded

    @torch.no_grad()
    def score(self, sentences: Union[str, List[str]]) -> List[dict]:
        """Log-probabilities (natural log) of each sentence's subword tokens and its ``</s>``,
        in order, each conditioned on everything scored or sampled before it.

        Returns one dict per sentence (``[]`` for no sentences): ``tokens`` (L,) ids ending in
        ``</s>``, ``positional_scores`` (L,), ``score`` their mean, ``ppl`` exp(-score).
        Raises ValueError, before the state moves, if a sentence encodes to no tokens."""
        results = []
        for targets in self._encode_sentences(sentences, "score"):
            inputs = torch.cat([targets.new_tensor([self._previous]), targets[:-1]])
            lprobs = self._advance(inputs).gather(-1, targets.to(self.device).unsqueeze(-1)).squeeze(-1).cpu()
            self._previous = int(targets[-1])
            results.append({"tokens": targets, "positional_scores": lprobs,
                            "score": float(lprobs.mean()), "ppl": math.exp(-float(lprobs.mean()))})
        return results

    @torch.no_grad()
    def perplexity(self, sentences: Union[str, List[str]]) -> float:
        """exp of the mean negative log-probability over all tokens of ``sentences`` (carried state).
        Raises ValueError for no sentences (no tokens: perplexity undefined) or an empty one."""
        scored = self.score(sentences)
        if not scored:
            raise ValueError("perplexity: no sentences given (the perplexity of zero tokens is undefined)")
        total = sum(float(r["positional_scores"].sum()) for r in scored)
        return math.exp(-total / sum(len(r["tokens"]) for r in scored))

    @torch.no_grad()
    def sample(self, prefix: str = "", max_len: int = 50, temperature: float = 1.0, topk: int = 0,
               seed: Optional[int] = None) -> str:
        """Continue the stream from the carried state: feed ``prefix`` (no ``</s>``; may be empty),
        then draw up to ``max_len`` (int >= 1) tokens, stopping after ``</s>``, from the softmax of
        the logits divided by ``temperature`` (finite, > 0), keeping the ``topk`` most likely
        (0 or negative: all; more than the vocabulary: all). The drawn tokens become part of the
        stream. Bad arguments raise ValueError/TypeError before the state moves."""
        if not isinstance(prefix, str):
            raise TypeError(f"sample continues one stream: prefix must be a str, got {type(prefix).__name__}")
        if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len < 1:
            raise ValueError(f"sample: max_len must be an integer >= 1, got {max_len!r}")
        if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"sample: temperature must be a finite number > 0, got {temperature!r}")
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral):
            raise ValueError(f"sample: topk must be an integer, got {topk!r}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        prefix_ids = self.encode(prefix)[:-1] if prefix.strip() else torch.zeros(0, dtype=torch.long)
        inputs = torch.cat([prefix_ids.new_tensor([self._previous]), prefix_ids])
        drawn = []
        for _ in range(int(max_len)):
            logits = self._advance(inputs)[-1].cpu() / temperature
            logits[self.src_dict.pad()] = -math.inf
            if 0 < topk < logits.numel():
                cut = logits.topk(int(topk)).values[-1]
                logits[logits < cut] = -math.inf
            token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
            drawn.append(token)
            inputs = torch.tensor([token])
            if token == self.src_dict.eos():
                break
        # the last drawn token is not fed yet: it is the next call's first input (like </s> after a sentence)
        self._previous = drawn[-1]
        words = torch.cat([prefix_ids, torch.tensor([t for t in drawn if t != self.src_dict.eos()], dtype=torch.long)])
        return self.decode(words)

    def generate(self, *args, **kwargs):
        """Refused: fairseq's beam search restarts from an empty state; use ``sample`` / ``score``."""
        raise NotImplementedError("DNILMHubInterface carries the recurrent state; beam search (generate/translate) "
                                  "is not supported: use sample(prefix, ...) or score(sentences)")

    translate = generate
