"""k-means fake quantization for QAT, and the export in the 1-Bit Wonder layout.

A linear layer's weight W [out, in] is cut into blocks of 64 along the input dimension.
Each block gets a scale s (absmax of the block; absmean at 1 bit, where absmax would put
almost every weight near zero), rounded to bf16 exactly as the export stores it. The
normalised weights u = W / s of the whole layer share one codebook of 2^b centroids (f32),
fitted by 1-D k-means (Lloyd iterations from quantile seeds) and refreshed on a schedule.
The forward pass uses Q(W)[r, j] = c[nearest(u[r, j])] * s[r, j / 64]; the backward pass is
straight-through (dL/dW = dL/dQ). Optionally the k-means objective weighs each weight's
error by its input channel's activation energy E[x_j^2] (collected during training) times
s^2, which is the layer's output error for uncorrelated inputs.

export_layer() produces exactly what the forward pass computes: `weight_packed` (U8,
indices most significant bit first, in*b/8 bytes per row), `scales` (BF16 [out, in/64]),
`centroids` (F32 [2^b]), so the exported model and the trained one agree bit for bit.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK = 64


def block_scales(w, bits):
    """bf16-rounded scales [out, in/64] (as float32)."""
    out, n = w.shape
    wb = w.detach().float().reshape(out, n // BLOCK, BLOCK).abs()
    s = wb.mean(-1) if bits == 1 else wb.amax(-1)
    s = s.to(torch.bfloat16).float()
    # A block of zeros has scale 0: any index reconstructs 0. Avoid 0/0.
    return torch.where(s > 0, s, torch.ones_like(s))


def normalized(w, s):
    out, n = w.shape
    return (w.detach().float().reshape(out, n // BLOCK, BLOCK) / s.unsqueeze(-1)).reshape(out, n)


def assign(u, centroids):
    """Index of the nearest centroid (centroids sorted ascending; ties go to the lower one)."""
    mids = (centroids[1:] + centroids[:-1]) * 0.5
    return torch.bucketize(u, mids, right=False)


def kmeans_1d(x, k, weights=None, iters=25, max_samples=1 << 21, seed=0):
    """Sorted centroids of 1-D (weighted) k-means on x: quantile seeds, Lloyd iterations."""
    x = x.reshape(-1).float()
    w = None if weights is None else weights.reshape(-1).float()
    if x.numel() > max_samples:
        g = torch.Generator(device="cpu").manual_seed(seed)
        sel = torch.randint(0, x.numel(), (max_samples,), generator=g).to(x.device)
        x = x[sel]
        w = None if w is None else w[sel]
    qs = (torch.arange(k, dtype=torch.float32, device=x.device) + 0.5) / k
    xs = x if x.numel() <= (1 << 24) else x[: 1 << 24]
    c = torch.quantile(xs, qs)
    c, _ = torch.sort(c)
    ww = torch.ones_like(x) if w is None else w
    for _ in range(iters):
        idx = assign(x, c)
        num = torch.zeros(k, device=x.device).index_add_(0, idx, x * ww)
        den = torch.zeros(k, device=x.device).index_add_(0, idx, ww)
        new = torch.where(den > 0, num / den.clamp_min(1e-30), c)
        new, _ = torch.sort(new)
        if torch.allclose(new, c, rtol=0, atol=1e-7):
            c = new
            break
        c = new
    # keep the centroids distinct so that the midpoints are strictly ordered
    for i in range(1, k):
        if c[i] <= c[i - 1]:
            c[i] = c[i - 1] + c[i - 1].abs() * 1e-3 + 1e-6
    return c


class _STE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, q):
        return q

    @staticmethod
    def backward(ctx, g):
        return g, None


class KMeansLinear(nn.Module):
    """nn.Linear without bias whose weight is k-means fake-quantized once `bits` is set."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in))
        nn.init.normal_(self.weight, std=0.02)
        self.bits = None
        self.register_buffer("centroids", torch.zeros(0), persistent=False)
        self.register_buffer("act_energy", torch.zeros(0), persistent=False)
        self.track_energy = False

    def set_bits(self, bits):
        if bits is not None and self.weight.shape[1] % BLOCK:
            raise SystemExit("in_features %d is not a multiple of %d" % (self.weight.shape[1], BLOCK))
        self.bits = bits
        if bits is not None:
            self.refresh_codebook()

    @torch.no_grad()
    def refresh_codebook(self, importance=False):
        w = self.weight
        s = block_scales(w, self.bits)
        u = normalized(w, s)
        wt = None
        if importance and self.act_energy.numel() == w.shape[1]:
            out, n = w.shape
            wt = (self.act_energy.view(1, n) * (s.repeat_interleave(BLOCK, dim=1) ** 2)).expand(out, n)
        self.centroids = kmeans_1d(u, 1 << self.bits, weights=wt)

    def quantized_weight(self):
        w = self.weight
        s = block_scales(w, self.bits)
        u = normalized(w, s)
        idx = assign(u, self.centroids)
        out, n = w.shape
        q = (self.centroids[idx].reshape(out, n // BLOCK, BLOCK) * s.unsqueeze(-1)).reshape(out, n)
        return q, idx, s

    def forward(self, x):
        if self.track_energy and self.training:
            with torch.no_grad():
                e = x.detach().float().pow(2).reshape(-1, x.shape[-1]).mean(0)
                self.act_energy = e if self.act_energy.numel() != e.numel() else 0.9 * self.act_energy + 0.1 * e
        if self.bits is None:
            return F.linear(x, self.weight.to(x.dtype))
        q, _, _ = self.quantized_weight()
        return F.linear(x, _STE.apply(self.weight, q.to(self.weight.dtype)).to(x.dtype))


def pack_msb_first(idx, bits):
    """[out, in] indices -> U8 [out, in*bits/8], most significant bit first."""
    out, n = idx.shape
    if (n * bits) % 8:
        raise ValueError("a row of %d %d-bit indices is not a whole number of bytes" % (n, bits))
    shifts = torch.arange(bits - 1, -1, -1, device=idx.device)
    b = ((idx.long().unsqueeze(-1) >> shifts) & 1).reshape(out, n * bits // 8, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=idx.device)
    return (b * weights).sum(-1).to(torch.uint8)


def unpack_msb_first(packed, bits, n):
    out = packed.shape[0]
    b = ((packed.long().unsqueeze(-1) >> torch.arange(7, -1, -1, device=packed.device)) & 1).reshape(out, -1)
    b = b[:, : n * bits].reshape(out, n, bits)
    return (b * (1 << torch.arange(bits - 1, -1, -1, device=packed.device))).sum(-1)


@torch.no_grad()
def export_layer(lin):
    """{'weight_packed', 'scales', 'centroids'} of a quantized KMeansLinear (CPU tensors)."""
    _, idx, s = lin.quantized_weight()
    return {"weight_packed": pack_msb_first(idx, lin.bits).cpu(),
            "scales": s.to(torch.bfloat16).cpu(),
            "centroids": lin.centroids.float().cpu()}
