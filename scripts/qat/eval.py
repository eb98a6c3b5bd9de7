#!/usr/bin/env python3
"""Perplexity of a Hugging Face Llama directory (float, or a k-means export in the 1-Bit
Wonder layout) in kmq's protocol (n_ctx 512, BOS first, second half of each chunk scored),
in float32 without TF32, so that it can be compared with `kmq perplexity`.

  eval.py MODEL_DIR NAME=TOKENS.u16 [NAME=TOKENS ...] [--chunks N] [--json OUT]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from kmq_qat_data import load_tokens, perplexity  # noqa: E402
from kmq_qat_model import model_from_hf  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("texts", nargs="+", help="NAME=TOKENS.u16")
    ap.add_argument("--chunks", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    m = model_from_hf(a.model).to(a.device).eval()
    bos = int(m.cfg.raw.get("bos_token_id") or 0)
    res = {}
    for spec in a.texts:
        name, path = spec.split("=", 1)
        ppl, nll, n, ch = perplexity(m, load_tokens(path), bos, n_ctx=a.ctx, max_chunks=a.chunks, device=a.device)
        res[name] = {"ppl": ppl, "nll": nll, "scored": n, "chunks": ch}
        print("%s %s: ppl %.4f (%d chunks, %d tokens scored)" % (a.model, name, ppl, ch, n), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
