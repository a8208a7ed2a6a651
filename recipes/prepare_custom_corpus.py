"""Raw text -> sacremoses tokens -> a learned sentencepiece model -> subword text for fairseq-preprocess.

The tokenizer and subword encoders are fairseq's own (built by
fairseq_dni.hub_interface.build_text_pipeline), the same objects the hub interface uses
on raw sentences, so training data and inference inputs are encoded by one code path.

    python recipes/prepare_custom_corpus.py --train raw.txt --out work/encoded --vocab-size 8000
    (optional --valid / --test files; otherwise the last lines of --train are held out)
"""

import argparse
import os
import sys

import sentencepiece as spm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="raw text, one sentence or paragraph per line")
    p.add_argument("--valid", help="raw validation text (default: held out from --train)")
    p.add_argument("--test", help="raw test text (default: held out from --train)")
    p.add_argument("--holdout-fraction", type=float, default=0.05, help="of --train lines, for valid and for test")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--lang", default="en", help="sacremoses language")
    args = p.parse_args()

    from fairseq_dni.hub_interface import build_text_pipeline

    def read(path):
        if not os.path.isfile(path):
            sys.exit(f"prepare_custom_corpus: error: {path} not found")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]

    train = read(args.train)
    held = max(1, int(len(train) * args.holdout_fraction))
    valid = read(args.valid) if args.valid else None
    test = read(args.test) if args.test else None
    if test is None:
        train, test = train[:-held], train[-held:]
    if valid is None:
        train, valid = train[:-held], train[-held:]
    if len(train) < 10:
        sys.exit(f"prepare_custom_corpus: error: only {len(train)} training lines left after holding out valid/test")

    os.makedirs(args.out, exist_ok=True)
    tokenizer, _ = build_text_pipeline("moses", None, lang=args.lang)
    tokenized = {name: [tokenizer.encode(line) for line in lines]
                 for name, lines in (("train", train), ("valid", valid), ("test", test))}
    moses_train = os.path.join(args.out, "train.moses")
    with open(moses_train, "w", encoding="utf-8") as f:
        f.write("\n".join(tokenized["train"]) + "\n")
    prefix = os.path.join(args.out, "sentencepiece.bpe")
    # hard_vocab_limit off: a small corpus may not support the requested size
    spm.SentencePieceTrainer.train(input=moses_train, model_prefix=prefix, vocab_size=args.vocab_size,
                                   model_type=args.model_type, character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2)
    _, subword = build_text_pipeline(None, "sentencepiece", prefix + ".model")
    for name, lines in tokenized.items():
        with open(os.path.join(args.out, f"{name}.txt"), "w", encoding="utf-8") as f:
            for line in lines:
                f.write(subword.encode(line) + "\n")
        print(f"{name}: {len(lines)} lines", file=sys.stderr)


if __name__ == "__main__":
    main()
