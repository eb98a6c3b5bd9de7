"""Token files and the perplexity protocol.

Token files are raw little-endian uint16 (GPT-2-sized vocabularies) or uint32 ids, named
*.u16 / *.u32. `perplexity()` is kmq's (and llama.cpp's) protocol: the text is tokenized
without BOS, cut into chunks of n_ctx tokens, each chunk's first token replaced by BOS, and
only the second half of each chunk scored (positions n_ctx/2 .. n_ctx-2 predict the next
token), so that every scored token has at least n_ctx/2 tokens of context.
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F


def load_tokens(path):
    if path.endswith(".u16"):
        return np.fromfile(path, dtype="<u2").astype(np.int64)
    if path.endswith(".u32"):
        return np.fromfile(path, dtype="<u4").astype(np.int64)
    raise SystemExit("%s: token files end in .u16 or .u32" % path)


def save_tokens(path, ids, vocab_size):
    arr = np.asarray(ids, dtype=np.int64)
    if len(arr) and (arr.min() < 0 or arr.max() >= vocab_size):
        raise SystemExit("%s: token id out of range" % path)
    dt = "<u2" if vocab_size <= 65536 else "<u4"
    path = path + (".u16" if dt == "<u2" else ".u32")
    tmp = path + ".tmp"
    arr.astype(dt).tofile(tmp)
    os.replace(tmp, path)
    return path


class Batches:
    """Random windows of seq+1 tokens from a token array, reproducible from the seed: two
    runs with the same seed, batch and seq see exactly the same tokens."""

    def __init__(self, tokens, seq, batch, seed):
        self.t = torch.from_numpy(tokens)
        self.seq, self.batch = seq, batch
        self.g = torch.Generator().manual_seed(seed)

    def next(self):
        starts = torch.randint(0, len(self.t) - self.seq - 1, (self.batch,), generator=self.g)
        x = torch.stack([self.t[s: s + self.seq + 1] for s in starts.tolist()])
        return x[:, :-1], x[:, 1:]


@torch.no_grad()
def perplexity(model, ids, bos, n_ctx=512, max_chunks=0, batch=8, device="cpu", dtype=torch.float32):
    """-> (ppl, mean nll, n scored tokens, chunks), kmq's protocol (see module comment)."""
    n_chunks = len(ids) // n_ctx
    if max_chunks:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise SystemExit("text has %d tokens, fewer than one chunk of %d" % (len(ids), n_ctx))
    first = n_ctx // 2
    nll, count = 0.0, 0
    t = torch.as_tensor(np.asarray(ids[: n_chunks * n_ctx]), dtype=torch.long).view(n_chunks, n_ctx)
    for c0 in range(0, n_chunks, batch):
        x = t[c0: c0 + batch].clone()
        x[:, 0] = bos
        x = x.to(device)
        with torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu",
                            dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(x)
        lp = F.log_softmax(logits[:, first: n_ctx - 1].float(), dim=-1)
        tgt = x[:, first + 1:]
        nll -= lp.gather(-1, tgt.unsqueeze(-1)).sum().item()
        count += tgt.numel()
    return math.exp(nll / count), nll / count, count, n_chunks


@torch.no_grad()
def val_loss(model, tokens, seq, batches, device, seed=1234):
    b = Batches(tokens, seq, 8, seed)
    tot = 0.0
    for _ in range(batches):
        x, y = b.next()
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=str(device).startswith("cuda")):
            logits = model(x)
        tot += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    return tot / batches
