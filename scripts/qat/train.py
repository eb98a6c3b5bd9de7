#!/usr/bin/env python3
"""k-means quantization-aware training of a Llama-family model (see docs/QAT.md).

Fine-tune a float checkpoint:
  train.py --init HF_DIR --bits 2 --train data/train.u16 --val data/val.u16 \
      --eval heldout=data/heldout.u16 --tokens 20M --out runs/ft-q2
Train from scratch:
  train.py --arch 384,20,6,2,1024 --vocab-from HF_DIR --bits 1 ... --out runs/scratch-q1

--bits 0 trains in float (the control). Linear layers get one codebook of 2^b centroids
each, fitted on 64-weight blocks normalised by absmax (absmean at 1 bit), refreshed every
--refresh-every steps, straight-through gradients. Embeddings, norms (and an untied output
layer) stay float and are stored in bf16, unless --embed-bits quantizes the embedding
the same way. OUT gets a checkpoint in the 1-Bit Wonder layout (`weight_packed` MSB-first,
`scales` bf16, `centroids` f32; float runs: plain bf16), config.json, the tokenizer files,
train_log.jsonl (one line per logged step) and eval.json (perplexity in kmq's protocol,
computed in float32 from exactly the exported weights). `kmq-convert OUT model.kmq` turns
it into a .kmq.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kmq_qat_data import Batches, load_tokens, perplexity, val_loss  # noqa: E402
from kmq_qat_model import Config, Llama, make_config, model_from_hf, write_safetensors  # noqa: E402
from kmq_qat_quant import BLOCK, KMeansLinear, export_layer  # noqa: E402

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "generation_config.json"]


def parse_count(s):
    s = s.strip().upper()
    mult = {"K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


class EmbedQuant:
    """k-means fake quantization of the (tied) embedding, sharing KMeansLinear's code."""

    def __init__(self, emb, bits):
        self.emb = emb
        self.lin = KMeansLinear(emb.weight.shape[1], emb.weight.shape[0]).to(emb.weight.device)
        self.lin.weight = emb.weight  # same Parameter
        self.lin.set_bits(bits)

    def weight(self):
        from kmq_qat_quant import _STE
        q, _, _ = self.lin.quantized_weight()
        return _STE.apply(self.emb.weight, q)


def build(a, device):
    if a.init:
        model = model_from_hf(a.init)
        tok_dir = a.init
    else:
        if not a.vocab_from:
            raise SystemExit("--arch needs --vocab-from HF_DIR (for vocab size, BOS/EOS and the tokenizer)")
        base = Config.load(os.path.join(a.vocab_from, "config.json")).raw
        try:
            h, l, nh, kv, ffn = (int(x) for x in a.arch.split(","))
        except ValueError:
            raise SystemExit("--arch HIDDEN,LAYERS,HEADS,KV_HEADS,FFN (e.g. 384,6,6,2,1024)")
        d = make_config(h, l, nh, kv, ffn, int(base["vocab_size"]), ctx=a.ctx,
                        bos=base.get("bos_token_id", 0), eos=base.get("eos_token_id", 0))
        model = Llama(Config(d))
        model.init_weights(a.seed)
        tok_dir = a.vocab_from
    return model.to(device), tok_dir


def lr_at(step, steps, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = (step - a.warmup) / max(1, steps - a.warmup)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--init", help="float Hugging Face Llama directory to fine-tune")
    src.add_argument("--arch", help="train from scratch: HIDDEN,LAYERS,HEADS,KV_HEADS,FFN")
    ap.add_argument("--vocab-from", help="with --arch: HF directory whose vocabulary/tokenizer to use")
    ap.add_argument("--bits", type=int, default=2, choices=[0, 1, 2, 3, 4], help="0 = float control run")
    ap.add_argument("--embed-bits", type=int, default=0, choices=[0, 1, 2, 3, 4],
                    help="also quantize the embedding (and the tied output layer); 0 = keep it bf16")
    ap.add_argument("--freeze-embeddings", action="store_true", help="do not train the embedding")
    ap.add_argument("--train", required=True, help="training tokens (.u16/.u32)")
    ap.add_argument("--val", help="validation tokens, for the loss logged during training")
    ap.add_argument("--eval", action="append", default=[], help="NAME=TOKENS: perplexity at the end (kmq protocol)")
    ap.add_argument("--eval-chunks", type=int, default=0, help="evaluate only the first N chunks (0 = all)")
    ap.add_argument("--tokens", default="20M", help="training token budget (e.g. 20M)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=1024, help="max_position_embeddings of a model trained from scratch")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--refresh-every", type=int, default=100, help="refit codebooks every N steps (0: only at start)")
    ap.add_argument("--importance", action="store_true", help="weigh the codebook fit by activation energy")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=7, help="seed of the token windows (same seed = same tokens)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (PyTorch 2)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    os.makedirs(a.out, exist_ok=True)
    model, tok_dir = build(a, dev)
    cfg = model.cfg
    bits = a.bits or None
    for _, lin in model.linears():
        lin.track_energy = a.importance
        lin.set_bits(bits)
    emb_q = EmbedQuant(model.model.embed_tokens, a.embed_bits) if a.embed_bits else None
    if emb_q:
        # the tied output layer and the lookup both see the quantized table
        orig_forward = model.forward

        def forward(ids):
            w = emb_q.weight()
            x = F.embedding(ids, w)
            from kmq_qat_model import rope_tables
            cos, sin = rope_tables(cfg, ids.shape[1], ids.device)
            for blk in model.model.layers:
                x = blk(x, cos, sin)
            x = model.model.norm(x)
            out_w = w if model.lm_head is None else model.lm_head.weight
            return F.linear(x, out_w.to(x.dtype))
        model.forward = forward
        del orig_forward
    if a.freeze_embeddings:
        model.model.embed_tokens.weight.requires_grad_(False)

    train = load_tokens(a.train)
    if train.max() >= cfg.vocab_size:
        raise SystemExit("%s: token id %d >= vocab size %d" % (a.train, train.max(), cfg.vocab_size))
    val = load_tokens(a.val) if a.val else None
    budget = parse_count(a.tokens)
    steps = max(1, budget // (a.batch * a.seq))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() == 2 and "embed_tokens" not in n else no_decay).append(p)
    kw = {"fused": True} if dev.type == "cuda" else {}
    try:
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=a.lr, betas=(0.9, 0.95), **kw)
    except TypeError:
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=a.lr, betas=(0.9, 0.95))
    fwd = model
    if a.compile and hasattr(torch, "compile") and emb_q is None:
        fwd = torch.compile(model)
    batches = Batches(train, a.seq, a.batch, a.data_seed)
    n_params = sum(p.numel() for p in model.parameters())
    header = {"event": "start", "args": vars(a), "params": n_params, "linear_params": cfg.linear_params(),
              "steps": steps, "tokens_per_step": a.batch * a.seq, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}
    log = open(os.path.join(a.out, "train_log.jsonl"), "w")

    def emit(d):
        log.write(json.dumps(d) + "\n")
        log.flush()
        print(json.dumps(d), flush=True)

    emit(header)
    if val is not None:
        model.eval()
        emit({"event": "val", "step": 0, "val_loss": val_loss(model, val, a.seq, 16, dev)})
    model.train()
    t0 = time.time()
    amp = dev.type == "cuda"
    for step in range(steps):
        if bits and a.refresh_every and step > 0 and step % a.refresh_every == 0:
            for _, lin in model.linears():
                lin.refresh_codebook(importance=a.importance)
            if emb_q:
                emb_q.lin.refresh_codebook()
        lr = lr_at(step, steps, a)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches.next()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        if step % a.log_every == 0 or step == steps - 1:
            el = time.time() - t0
            emit({"event": "train", "step": step, "tokens": (step + 1) * a.batch * a.seq, "loss": round(loss.item(), 4),
                  "grad_norm": round(gn.item(), 3), "lr": lr, "elapsed_s": round(el, 1),
                  "tok_per_s": round((step + 1) * a.batch * a.seq / max(el, 1e-9))})
        if val is not None and (step + 1) % max(1, steps // 4) == 0:
            model.eval()
            emit({"event": "val", "step": step + 1, "val_loss": val_loss(model, val, a.seq, 16, dev)})
            model.train()

    # ---- final weights: bf16 for every float tensor, as exported; quantized layers exact
    model.eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            is_q = (bits and any(n == hf + ".weight" for hf, _ in model.linears())) or (emb_q and "embed_tokens" in n)
            if not is_q:
                p.copy_(p.to(torch.bfloat16).float())
    tensors = {}
    quantized = set()
    for hf, lin in model.linears():
        if bits:
            for k, v in export_layer(lin).items():
                tensors[hf + "." + k] = v
            quantized.add(hf)
    if emb_q:
        for k, v in export_layer(emb_q.lin).items():
            tensors["model.embed_tokens." + k] = v
        quantized.add("model.embed_tokens")
    for n, p in model.named_parameters():
        base = n[: -len(".weight")] if n.endswith(".weight") else n
        if base not in quantized:
            tensors[n] = p.detach().to(torch.bfloat16).cpu()
    write_safetensors(os.path.join(a.out, "model.safetensors"), tensors)
    c = dict(cfg.raw)
    c["torch_dtype"] = "bfloat16"
    if bits or emb_q:
        c["quantization_config"] = {"quant_method": "kmeans", "bits": bits or a.embed_bits, "block_size": BLOCK,
                                    "scale": "absmean" if bits == 1 else "absmax", "codebook": "per-layer",
                                    "embed_bits": a.embed_bits or None, "layout": "1-bit-wonder",
                                    "producer": "kmq scripts/qat/train.py"}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    for fn in TOKENIZER_FILES:
        p = os.path.join(tok_dir, fn)
        if os.path.exists(p):
            shutil.copy(p, os.path.join(a.out, fn))

    # ---- evaluation in float32 (no TF32) of exactly the exported weights
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    bos = int(cfg.raw.get("bos_token_id") or 0)
    res = {"steps": steps, "tokens": steps * a.batch * a.seq, "train_seconds": round(time.time() - t0, 1)}
    for spec in a.eval:
        name, path = spec.split("=", 1)
        ppl, nll, n, ch = perplexity(model, load_tokens(path), bos, n_ctx=512, max_chunks=a.eval_chunks,
                                     device=dev)
        res[name] = {"ppl": ppl, "nll": nll, "scored": n, "chunks": ch}
        emit({"event": "eval", "text": name, "ppl": round(ppl, 4), "chunks": ch})
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=2)
    emit({"event": "done", **{k: v for k, v in res.items() if not isinstance(v, dict)}})


if __name__ == "__main__":
    main()
