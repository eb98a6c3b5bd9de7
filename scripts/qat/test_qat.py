#!/usr/bin/env python3
"""Tests of the k-means QAT recipe (run by ctest as `qat_python`). Exit code 77 (skipped)
where PyTorch is missing or older than 1.13. The end-to-end case also needs the kmq
binaries (KMQ_BIN) and the shared data (KMQ_SHARED) and skips without them.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print("qat tests: SKIP (%s; install python3-torch python3-numpy)" % e)
    sys.exit(77)
if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (1, 13):
    print("qat tests: SKIP (PyTorch %s is older than 1.13)" % torch.__version__)
    sys.exit(77)

from kmq_qat_quant import (KMeansLinear, assign, block_scales, kmeans_1d, pack_msb_first,  # noqa: E402
                           unpack_msb_first)
from kmq_qat_data import load_tokens, perplexity  # noqa: E402
from kmq_qat_model import model_from_hf  # noqa: E402


class Quantizer(unittest.TestCase):
    def test_pack_msb_first(self):
        # 2 bits: indices 3,0,1,2 -> 11 00 01 10 = 0xC6
        self.assertEqual(pack_msb_first(torch.tensor([[3, 0, 1, 2]]), 2).tolist(), [[0xC6]])
        # 1 bit: 1,0,0,0,0,0,0,1 -> 0x81 ; 3 bits: 5,2,7,1,0,6,3,4 -> 101 010 111 001 000 110 011 100
        self.assertEqual(pack_msb_first(torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1]]), 1).tolist(), [[0x81]])
        self.assertEqual(pack_msb_first(torch.tensor([[5, 2, 7, 1, 0, 6, 3, 4]]), 3).tolist(),
                         [[0b10101011, 0b10010001, 0b10011100]])
        g = torch.Generator().manual_seed(1)
        for bits in (1, 2, 3, 4):
            idx = torch.randint(0, 1 << bits, (7, 192), generator=g)
            p = pack_msb_first(idx, bits)
            self.assertEqual(tuple(p.shape), (7, 192 * bits // 8))
            self.assertTrue(torch.equal(unpack_msb_first(p, bits, 192), idx))

    def test_fake_quant_is_nearest_centroid_times_bf16_scale(self):
        torch.manual_seed(0)
        for bits in (1, 2, 3, 4):
            lin = KMeansLinear(192, 37)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(37, 192) * torch.rand(37, 1))
            lin.set_bits(bits)
            c = lin.centroids
            self.assertEqual(c.numel(), 1 << bits)
            self.assertTrue(torch.all(c[1:] > c[:-1]))
            q, idx, s = lin.quantized_weight()
            w = lin.weight.detach().view(37, 3, 64)
            ref_s = (w.abs().mean(-1) if bits == 1 else w.abs().amax(-1))
            self.assertTrue(torch.equal(s, ref_s.to(torch.bfloat16).float()))
            u = w / s.unsqueeze(-1)
            # brute force nearest centroid
            d = (u.unsqueeze(-1) - c.view(1, 1, 1, -1)).abs()
            best = d.min(-1).values
            got = (u - c[idx.view(37, 3, 64)]).abs()
            self.assertTrue(torch.allclose(got, best, atol=1e-6))
            self.assertTrue(torch.allclose(q.view(37, 3, 64), c[idx.view(37, 3, 64)] * s.unsqueeze(-1)))

    def test_straight_through_gradient(self):
        torch.manual_seed(0)
        lin = KMeansLinear(128, 16)
        lin.set_bits(2)
        x = torch.randn(5, 128)
        y = lin(x)
        q, _, _ = lin.quantized_weight()
        self.assertTrue(torch.allclose(y, F.linear(x, q), atol=1e-5))
        g = torch.randn_like(y)
        y.backward(g)
        self.assertTrue(torch.allclose(lin.weight.grad, g.t() @ x, atol=1e-4))

    def test_kmeans_beats_its_seed_and_weights_matter(self):
        torch.manual_seed(0)
        x = torch.cat([torch.randn(4000) * 0.1 - 1, torch.randn(1000) * 0.1 + 1, torch.randn(100) * 0.1 + 3])
        c = kmeans_1d(x, 4)
        seed = torch.quantile(x, (torch.arange(4) + 0.5) / 4)
        sse = lambda cc: ((x - cc[assign(x, cc)]) ** 2).sum().item()  # noqa: E731
        self.assertLess(sse(c), sse(seed))
        # heavy weights on the far cluster pull a centroid onto it
        w = torch.ones_like(x)
        w[-100:] = 1000.0
        cw = kmeans_1d(x, 2, weights=w)
        self.assertGreater(cw.max().item(), 2.5)


class EndToEnd(unittest.TestCase):
    """A tiny model trained for a few steps, exported, converted and run by kmq."""

    def setUp(self):
        self.bin = os.environ.get("KMQ_BIN", "")
        self.shared = os.environ.get("KMQ_SHARED", os.path.join(HERE, "..", "..", "..", "shared"))
        if not (os.path.exists(os.path.join(self.bin, "kmq")) and os.path.exists(os.path.join(self.bin, "kmq-convert"))):
            self.skipTest("KMQ_BIN does not hold kmq and kmq-convert")
        self.hf = os.path.join(self.shared, "models", "stories260K-hf")
        self.text = os.path.join(self.shared, "text", "tinystories_sample.txt")
        if not os.path.exists(self.hf) or not os.path.exists(self.text):
            self.skipTest("shared data not found (KMQ_SHARED)")
        self.tmp = tempfile.mkdtemp(prefix="kmq-qat-")

    def tearDown(self):
        if hasattr(self, "tmp"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run_ok(self, args, **kw):
        r = subprocess.run(args, capture_output=True, text=True, **kw)
        self.assertEqual(r.returncode, 0, "%s failed:\n%s\n%s" % (" ".join(args), r.stdout[-2000:], r.stderr[-2000:]))
        return r

    def test_train_export_convert_and_kmq_agree(self):
        t = self.tmp
        with open(self.text, encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(t, "train.txt"), "w", encoding="utf-8") as f:
            f.write(text[:60000])
        with open(os.path.join(t, "eval.txt"), "w", encoding="utf-8") as f:
            f.write(text[60000:68000])
        kmq, conv = os.path.join(self.bin, "kmq"), os.path.join(self.bin, "kmq-convert")
        # kmq's own tokenizer makes the token files (the float stories260K as a tokenizer carrier)
        self.run_ok([conv, self.hf, "-o", os.path.join(t, "tok.kmq"), "--bits", "4"])
        for n in ("train", "eval"):
            self.run_ok([kmq, "tokenize", "-m", os.path.join(t, "tok.kmq"), "-f", os.path.join(t, n + ".txt"),
                         "-o", os.path.join(t, n + ".u16")])
        out = os.path.join(t, "run")
        r = self.run_ok([sys.executable, os.path.join(HERE, "train.py"), "--arch", "128,2,2,1,256",
                         "--vocab-from", self.hf, "--bits", "2", "--embed-bits", "4", "--train",
                         os.path.join(t, "train.u16"), "--val", os.path.join(t, "eval.u16"),
                         "--eval", "eval=" + os.path.join(t, "eval.u16"), "--tokens", "24K", "--batch", "4",
                         "--seq", "128", "--lr", "3e-3", "--warmup", "5", "--refresh-every", "10",
                         "--log-every", "5", "--device", "cpu", "--out", out])
        with open(os.path.join(out, "train_log.jsonl")) as f:
            log = [json.loads(line) for line in f]
        losses = [e["loss"] for e in log if e["event"] == "train"]
        self.assertLess(losses[-1], losses[0] - 0.5, "training did not reduce the loss: %s" % losses)
        with open(os.path.join(out, "eval.json")) as f:
            trained = json.load(f)["eval"]["ppl"]
        # the export, read back independently (dequantized to float), computes the same
        m = model_from_hf(out).eval()
        ids = load_tokens(os.path.join(t, "eval.u16"))
        exported = perplexity(m, ids, int(m.cfg.raw["bos_token_id"]))[0]
        self.assertAlmostEqual(exported / trained, 1.0, delta=1e-5)
        # and so does kmq, on its exact (scalar) path and its default kernels
        self.run_ok([conv, out, "-o", os.path.join(t, "qat.kmq")])
        for isa, tol in (("scalar", 1e-5), ("", 1e-3)):
            env = dict(os.environ)
            if isa:
                env["KMQ_ISA"] = isa
            r = self.run_ok([kmq, "perplexity", "-m", os.path.join(t, "qat.kmq"), "-f", os.path.join(t, "eval.txt"),
                             "--json"], env=env)
            ppl = json.loads(r.stdout)["ppl"]
            self.assertAlmostEqual(ppl / exported, 1.0, delta=tol, msg="kmq %s %f vs PyTorch %f" % (isa, ppl, exported))


if __name__ == "__main__":
    unittest.main(verbosity=2)
