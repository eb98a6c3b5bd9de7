"""A Llama-family decoder in PyTorch with Hugging Face tensor names, for k-means QAT.

Only what the recipe needs: RMSNorm, rotate-half RoPE (default scaling), grouped-query
attention, SwiGLU, tied or untied output layer. Linear layers are `KMeansLinear`
(kmq_qat_quant.py), which behave as plain float layers until they are given a bit width.
Safetensors are read and written by the small functions here (no extra package).
"""
import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

from kmq_qat_quant import KMeansLinear

LINEAR_NAMES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


class Config:
    def __init__(self, d):
        self.raw = dict(d)
        self.vocab_size = int(d["vocab_size"])
        self.hidden_size = int(d["hidden_size"])
        self.intermediate_size = int(d["intermediate_size"])
        self.num_hidden_layers = int(d["num_hidden_layers"])
        self.num_attention_heads = int(d["num_attention_heads"])
        self.num_key_value_heads = int(d.get("num_key_value_heads") or self.num_attention_heads)
        self.head_dim = int(d.get("head_dim") or self.hidden_size // self.num_attention_heads)
        self.rms_norm_eps = float(d.get("rms_norm_eps", 1e-6))
        rp = d.get("rope_parameters") or {}
        self.rope_theta = float(rp.get("rope_theta", d.get("rope_theta", 10000.0)))
        rtype = rp.get("rope_type", (d.get("rope_scaling") or {}).get("rope_type", "default"))
        if rtype != "default":
            raise SystemExit("rope type %r is not supported by the QAT recipe (default only)" % rtype)
        self.tie_word_embeddings = bool(d.get("tie_word_embeddings", False))
        self.max_position_embeddings = int(d.get("max_position_embeddings", 2048))
        for k in ("attention_bias", "mlp_bias"):
            if d.get(k):
                raise SystemExit("%s = true is not supported by the QAT recipe" % k)

    @staticmethod
    def load(path):
        with open(path) as f:
            return Config(json.load(f))

    def linear_params(self):
        h, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        per = h * hd * self.num_attention_heads * 2 + h * hd * self.num_key_value_heads * 2 + 3 * h * f
        return per * self.num_hidden_layers


def make_config(hidden, layers, heads, kv_heads, ffn, vocab, ctx=1024, bos=50256, eos=50256):
    """A HF-style config.json dict for a model trained from scratch."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": hidden // heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": ctx, "tie_word_embeddings": True, "bos_token_id": bos,
            "eos_token_id": eos, "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16"}


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(cfg, n, device):
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device) / cfg.head_dim))
    t = torch.arange(n, dtype=torch.float32, device=device)
    f = torch.outer(t, inv)
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def sdpa(q, k, v):
    """Causal attention: PyTorch 2's fused kernel where present, else the plain formula."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    att = att.float().masked_fill(mask, float("-inf")).softmax(-1).to(v.dtype)
    return att @ v


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, hd = cfg.hidden_size, cfg.head_dim
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, hd
        self.q_proj = KMeansLinear(h, self.nh * hd)
        self.k_proj = KMeansLinear(h, self.nkv * hd)
        self.v_proj = KMeansLinear(h, self.nkv * hd)
        self.o_proj = KMeansLinear(self.nh * hd, h)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.nkv != self.nh:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        y = sdpa(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = KMeansLinear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = KMeansLinear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = KMeansLinear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def init_weights(self, seed):
        """GPT-2/Llama-style initialisation for training from scratch (std 0.02, output
        projections scaled down by sqrt(2 * layers))."""
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
                continue
            s = std / math.sqrt(2 * self.cfg.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * s)

    def linears(self):
        """(hf_name, KMeansLinear) of every quantizable linear layer."""
        out = []
        for i, blk in enumerate(self.model.layers):
            for n in LINEAR_NAMES:
                mod = blk
                for part in n.split("."):
                    mod = getattr(mod, part)
                out.append(("model.layers.%d.%s" % (i, n), mod))
        return out

    def forward(self, ids):
        t = ids.shape[1]
        cos, sin = rope_tables(self.cfg, t, ids.device)
        x = self.model.embed_tokens(ids)
        for blk in self.model.layers:
            x = blk(x, cos, sin)
        x = self.model.norm(x)
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, w.to(x.dtype))


# ---------------------------------------------------------------- safetensors

_DT = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2), "F16": (torch.float16, 2), "U8": (torch.uint8, 1)}
_NAME = {v[0]: k for k, v in _DT.items()}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DT:
            raise SystemExit("%s: tensor %s has dtype %s (expected F32, BF16, F16 or U8)" % (path, name, info["dtype"]))
        a, b = info["data_offsets"]
        dt = _DT[info["dtype"]][0]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=dt) if b > a else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    """tensors: dict name -> CPU tensor. Written to PATH.tmp, then renamed."""
    hdr, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.uint8 else t.numpy().tobytes()
        hdr[name] = {"dtype": _NAME[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_hf(dirpath):
    """Config and float state dict of a Hugging Face Llama directory (sharded or not)."""
    cfg = Config.load(os.path.join(dirpath, "config.json"))
    idx = os.path.join(dirpath, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    sd = {}
    for fn in files:
        sd.update(read_safetensors(os.path.join(dirpath, fn)))
    return cfg, dequantize_1bw(sd)


def dequantize_1bw(sd):
    """Replaces NAME.weight_packed/scales/centroids (1-Bit Wonder layout) by the float
    NAME.weight they describe: w[r][j] = centroids[idx[r][j]] * scales[r][j / 64]."""
    from kmq_qat_quant import unpack_msb_first
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_packed"):
            base = k[: -len(".weight_packed")]
            c, s = sd[base + ".centroids"].float(), sd[base + ".scales"].float()
            bits = {2: 1, 4: 2, 8: 3, 16: 4}[c.numel()]
            n = s.shape[1] * 64
            idx = unpack_msb_first(v, bits, n)
            out[base + ".weight"] = (c[idx].view(v.shape[0], -1, 64) * s.unsqueeze(-1)).view(v.shape[0], n)
        elif not k.endswith((".scales", ".centroids")):
            out[k] = v
    return out


def model_from_hf(dirpath):
    cfg, sd = load_hf(dirpath)
    m = Llama(cfg)
    own = m.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise SystemExit("%s: missing tensors %s" % (dirpath, ", ".join(missing[:5])))
    with torch.no_grad():
        for k, v in own.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise SystemExit("%s: %s has shape %s, config implies %s" % (dirpath, k, list(sd[k].shape), list(v.shape)))
            v.copy_(sd[k].float())
    return m
