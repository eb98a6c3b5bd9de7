#!/usr/bin/env python3
"""Copies a k-means export (1-Bit Wonder layout), turning the quantized tensors whose name
matches --only back into float32 `NAME.weight` (w = centroids[idx] * scale), so that
kmq-convert can quantize them differently. Used for the bundled model (docs/QAT.md): its
QAT-trained 3-bit embedding is re-quantized to 2 bits by `kmq-convert --embed-type 2`.

  dequantize.py EXPORT_DIR OUT_DIR [--only REGEX]   (default: every quantized tensor)
"""
import argparse
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kmq_qat_model import dequantize_1bw, read_safetensors, write_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--only", default=".*", help="regex on the tensor's base name, e.g. 'model\\.embed_tokens'")
    a = ap.parse_args()
    if os.path.abspath(a.src) == os.path.abspath(a.out):
        raise SystemExit("OUT_DIR must differ from EXPORT_DIR")
    files = [f for f in os.listdir(a.src) if f.endswith(".safetensors")]
    if not files:
        raise SystemExit("%s: no .safetensors files" % a.src)
    os.makedirs(a.out, exist_ok=True)
    pat = re.compile(a.only)
    n = 0
    for fn in files:
        sd = read_safetensors(os.path.join(a.src, fn))
        bases = [k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed")]
        chosen = [b for b in bases if pat.search(b)]
        part = {}
        for b in chosen:
            part.update({b + s: sd.pop(b + s) for s in (".weight_packed", ".scales", ".centroids")})
        for k, v in dequantize_1bw(part).items():
            sd[k] = v.float()
        n += len(chosen)
        write_safetensors(os.path.join(a.out, fn), sd)
    for fn in os.listdir(a.src):
        if not fn.endswith(".safetensors") and os.path.isfile(os.path.join(a.src, fn)):
            shutil.copy(os.path.join(a.src, fn), os.path.join(a.out, fn))
    print("dequantize: %d tensors to float32 in %s" % (n, a.out))


if __name__ == "__main__":
    main()
