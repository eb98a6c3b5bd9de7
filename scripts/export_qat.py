#!/usr/bin/env python3
"""Writes a k-means QAT-style export of a Hugging Face Llama checkpoint, for testing the
lossless import of such checkpoints (issue #6). Standard library only (no numpy/torch).

Two layouts:

  --layout 1bw      (default) the 1-Bit Wonder export: per linear layer
                    NAME.weight_packed  U8   [out, in*b/8]  b-bit indices, most significant bits first
                    NAME.scales         BF16 [out, in/64]   absmax (b >= 3) or absmean (b <= 2) of 64 weights
                    NAME.centroids      F32  [2^b]          one codebook per layer
                    embeddings and norms in BF16; config.json gets
                    "quantization_config": {"quant_method": "kmeans", "bits": b, "block_size": 64, ...}.
                    Reconstruction: w = centroids[idx] * scales[r][j / 64].
  --layout paretoq  a ParetoQ-style fake-quantized BF16 checkpoint: every linear weight row is
                    alpha_r * level with uniform levels (1 bit: +-1; 2 bits: +-0.5, +-1.5; 3/4 bits:
                    the integers -2^(b-1) .. 2^(b-1)-1), alpha_r rounded to 4 significant bits so
                    that every product is exact in bf16.

The codebooks here are fitted by plain Lloyd iterations on a subsample: the point is the
layout, not the quality. Usage:
  scripts/export_qat.py HF_DIR OUT_DIR --bits 2 [--layout 1bw|paretoq]
"""
import argparse
import array
import bisect
import json
import os
import shutil
import struct
import sys

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def read_safetensors(path):
    """name -> (dtype, shape, raw bytes)"""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[a:b])
    return out


def to_f32(dtype, raw):
    if dtype == "F32":
        a = array.array("f")
        a.frombytes(raw)
        return a
    if dtype == "BF16":
        buf = bytearray(2 * len(raw))
        buf[2::4] = raw[0::2]
        buf[3::4] = raw[1::2]
        a = array.array("f")
        a.frombytes(bytes(buf))
        return a
    if dtype == "F16":
        vals = struct.unpack("<%de" % (len(raw) // 2), raw)
        return array.array("f", vals)
    raise SystemExit("unsupported dtype " + dtype)


def bf16_bits(x):
    """float -> bf16 bit pattern, round to nearest even (finite inputs)."""
    b = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def bf16_value(bits):
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def to_bf16_bytes(vals):
    return struct.pack("<%dH" % len(vals), *[bf16_bits(v) for v in vals])


def round_sig(x, bits):
    """x rounded to `bits` significant bits (x > 0)."""
    m, e = __import__("math").frexp(x)
    scale = 1 << bits
    return __import__("math").ldexp(round(m * scale) / scale, e)


def lloyd(samples, k, iters=20):
    s = sorted(samples)
    n = len(s)
    cent = [s[min(n - 1, int((i + 0.5) * n / k))] for i in range(k)]
    for _ in range(iters):
        cent.sort()
        mids = [(cent[i] + cent[i + 1]) / 2 for i in range(k - 1)]
        sums = [0.0] * k
        cnt = [0] * k
        for v in s:
            i = bisect.bisect_left(mids, v)
            sums[i] += v
            cnt[i] += 1
        cent = [sums[i] / cnt[i] if cnt[i] else cent[i] for i in range(k)]
    # distinct, sorted, exact f32
    cent = sorted(f32(c) for c in cent)
    for i in range(1, k):
        if cent[i] <= cent[i - 1]:
            cent[i] = f32(cent[i - 1] + abs(cent[i - 1]) * 1e-3 + 1e-6)
    return cent


def export_1bw(w, rows, cols, bits):
    """-> (packed bytes, scales bf16 bytes, centroids f32 bytes)"""
    if cols % 64:
        raise SystemExit("in_features %d is not a multiple of 64" % cols)
    k = 1 << bits
    nb = cols // 64
    scales = []
    for r in range(rows):
        base = r * cols
        for b in range(nb):
            blk = w[base + 64 * b: base + 64 * b + 64]
            if bits >= 3:
                s = max(abs(x) for x in blk)
            else:
                s = sum(abs(x) for x in blk) / 64.0
            scales.append(bf16_value(bf16_bits(s)))
    step = max(1, (rows * cols) // 65536)
    samples = []
    for i in range(0, rows * cols, step):
        s = scales[i // 64]
        if s != 0:
            samples.append(w[i] / s)
    cent = lloyd(samples, k)
    mids = [(cent[i] + cent[i + 1]) / 2 for i in range(k - 1)]
    packed = bytearray(rows * cols * bits // 8)
    bitpos = 0
    for i in range(rows * cols):
        s = scales[i // 64]
        idx = bisect.bisect_left(mids, w[i] / s) if s != 0 else 0
        for t in range(bits - 1, -1, -1):  # most significant bit first
            if (idx >> t) & 1:
                packed[bitpos >> 3] |= 0x80 >> (bitpos & 7)
            bitpos += 1
    return bytes(packed), to_bf16_bytes(scales), struct.pack("<%df" % k, *cent)


def export_paretoq(w, rows, cols, bits):
    """-> bf16 bytes of the fake-quantized weight"""
    if bits == 1:
        levels = [-1.0, 1.0]
    elif bits == 2:
        levels = [-1.5, -0.5, 0.5, 1.5]
    else:
        levels = [float(i) for i in range(-(1 << (bits - 1)), 1 << (bits - 1))]
    mids = [(levels[i] + levels[i + 1]) / 2 for i in range(len(levels) - 1)]
    out = []
    for r in range(rows):
        row = w[r * cols:(r + 1) * cols]
        if bits <= 2:
            a = sum(abs(x) for x in row) / cols
        else:
            a = max(abs(x) for x in row) / (1 << (bits - 1))
        a = round_sig(a, 4) if a > 0 else 1.0
        for x in row:
            out.append(levels[bisect.bisect_left(mids, x / a)] * a)
    return to_bf16_bytes(out)


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes)"""
    hdr = {}
    off = 0
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, raw in tensors:
            f.write(raw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, default=2, choices=[1, 2, 3, 4])
    ap.add_argument("--layout", default="1bw", choices=["1bw", "paretoq"])
    ap.add_argument("--layers", type=int, default=-1, help="quantize only the first N layers (tests)")
    a = ap.parse_args()

    cfg = json.load(open(os.path.join(a.src, "config.json")))
    idx = os.path.join(a.src, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    src = {}
    for fn in files:
        src.update(read_safetensors(os.path.join(a.src, fn)))

    os.makedirs(a.out, exist_ok=True)
    out = []
    n_layers = cfg["num_hidden_layers"]
    for name in sorted(src):
        dt, shape, raw = src[name]
        lin = next((l for l in LINEARS if name.endswith(l + ".weight")), None)
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else -1
        quant = lin is not None and (a.layers < 0 or layer < a.layers)
        if not quant:
            # embeddings, norms, lm_head (and unquantized layers): bf16
            out.append((name, "BF16", shape, raw if dt == "BF16" else to_bf16_bytes(to_f32(dt, raw))))
            continue
        rows, cols = shape
        w = to_f32(dt, raw)
        base = name[:-len(".weight")]
        if a.layout == "1bw":
            packed, scales, cent = export_1bw(w, rows, cols, a.bits)
            out.append((base + ".weight_packed", "U8", [rows, cols * a.bits // 8], packed))
            out.append((base + ".scales", "BF16", [rows, cols // 64], scales))
            out.append((base + ".centroids", "F32", [1 << a.bits], cent))
        else:
            out.append((name, "BF16", shape, export_paretoq(w, rows, cols, a.bits)))
        print("  %s %dx%d" % (base, rows, cols), file=sys.stderr)
    write_safetensors(os.path.join(a.out, "model.safetensors"), out)
    if a.layout == "1bw":
        cfg["quantization_config"] = {"quant_method": "kmeans", "bits": a.bits, "block_size": 64,
                                      "pack_order": "msb_first", "layout": "1-Bit Wonder"}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for fn in ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "generation_config.json"]:
        if os.path.exists(os.path.join(a.src, fn)):
            shutil.copy(os.path.join(a.src, fn), os.path.join(a.out, fn))
    print("wrote", a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
