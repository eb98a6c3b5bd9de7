#!/usr/bin/env python3
"""Tokenizes the training corpus and evaluation texts with a Hugging Face tokenizer.json
(needs the `tokenizers` package). Texts are tokenized without BOS, as kmq's perplexity
tool does; corpus documents (separated by a line holding \\0DOC\\0) each start with BOS.
The last --val-docs documents are held out as the validation split.

  tokenize_corpus.py --tokenizer DIR/tokenizer.json --corpus corpus.txt.xz --out OUTDIR \
      [--text NAME=FILE ...]
writes OUTDIR/train.u16, OUTDIR/val.u16, OUTDIR/NAME.u16 and OUTDIR/tokens.json.
"""
import argparse
import json
import lzma
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kmq_qat_data import save_tokens  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus")
    ap.add_argument("--out", required=True)
    ap.add_argument("--text", action="append", default=[], help="NAME=FILE, tokenized whole")
    ap.add_argument("--val-docs", type=int, default=8)
    ap.add_argument("--bos", type=int, default=None, help="BOS id (default: the tokenizer's <|endoftext|> or <s>)")
    a = ap.parse_args()
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise SystemExit("tokenize_corpus.py needs the `tokenizers` package (pip install tokenizers)")
    tok = Tokenizer.from_file(a.tokenizer)
    vocab = tok.get_vocab_size()
    bos = a.bos
    if bos is None:
        for s in ("<|endoftext|>", "<s>", "<|begin_of_text|>"):
            if tok.token_to_id(s) is not None:
                bos = tok.token_to_id(s)
                break
    os.makedirs(a.out, exist_ok=True)
    info = {"tokenizer": os.path.abspath(a.tokenizer), "vocab_size": vocab, "bos": bos, "files": {}}
    t0 = time.time()
    if a.corpus:
        op = lzma.open if a.corpus.endswith(".xz") else open
        with op(a.corpus, "rt", encoding="utf-8") as f:
            text = f.read()
        docs = [d.strip("\n") for d in text.split("\0DOC\0") if d.strip()]
        print("corpus: %d documents, %.1f MB" % (len(docs), len(text) / 1e6), flush=True)
        enc = tok.encode_batch(docs, add_special_tokens=False)
        splits = {"train": enc[: len(enc) - a.val_docs], "val": enc[len(enc) - a.val_docs:]}
        for name, part in splits.items():
            ids = []
            for e in part:
                ids.append(bos)
                ids.extend(e.ids)
            p = save_tokens(os.path.join(a.out, name), ids, vocab)
            info["files"][name] = {"path": os.path.basename(p), "tokens": len(ids), "documents": len(part)}
            print("%s: %d tokens (%d documents) -> %s  [%.0f s]" % (name, len(ids), len(part), p, time.time() - t0), flush=True)
    for spec in a.text:
        name, path = spec.split("=", 1)
        with open(path, encoding="utf-8") as f:
            ids = tok.encode(f.read(), add_special_tokens=False).ids
        p = save_tokens(os.path.join(a.out, name), ids, vocab)
        info["files"][name] = {"path": os.path.basename(p), "tokens": len(ids), "source": os.path.basename(path)}
        print("%s: %d tokens -> %s" % (name, len(ids), p), flush=True)
    with open(os.path.join(a.out, "tokens.json"), "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
