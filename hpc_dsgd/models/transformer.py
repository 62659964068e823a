"""Encoder-decoder Transformer (Vaswani et al. 2017) down-scaled by 2 from the base model, for Multi30k.

Base model: N = 6 layers per stack, d_model = 512, d_ff = 2048, h = 8 heads (d_k = 64), dropout 0.1.
Down-scaled by 2 (Kong et al. 2021, Sec. 4.2): d_model = 256, d_ff = 1024, h = 4 heads (d_k = 64 kept),
and **N = 3 layers** per stack. The paper says "down-scaled by 2" and states no layer count; we halve
every size of the base model, depth included, because (i) that is the literal reading of scaling the whole
base model by 2, (ii) Multi30k (29k sentence pairs, about 0.4 M target tokens) is roughly a hundredth of
WMT'14 En-De, where 6 layers of width 512 already need heavy regularisation, and 3-layer models of width
256 are the usual Multi30k Transformer; (iii) with n = 32 replicas every replica stores its parameters and
Adam's two moments, so a smaller model keeps the (n, d) blocks small. ``num_layers`` is an argument:
``num_layers=6`` gives the width-halved, full-depth variant.

Built from ``torch.nn`` layers (``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``, post-norm
as in Vaswani et al., ReLU, batch first). Dropout is Vaswani et al.'s (their Sec. 5.4, P_drop = 0.1; Kong et al.
do not state it): on the output of every sub-layer before the residual sum, and on the sums of embeddings
and positions; no attention-weight or feed-forward-inner dropout (later tensor2tensor additions). Its masks are
COUNTER-BASED: ``forward`` takes a
0-dim int64 ``key`` (the workload derives it from (seed, replica, iteration)), and the mask of dropout site s
is a hash of (key, s, element index) (data/augment.py's hash). So the masks are the same under ``vmap`` over k
replicas and in a loop, on any rank split, on CPU and GPU, and need no generator state; without a key
(plain use) dropout draws from torch's generator as ``nn.Dropout`` does.

Sinusoidal positions (Sec. 3.5), computed on the fly (no
buffer: the replica block holds only parameters and BN-style state). Embeddings: **tied** three ways
(source embedding, target embedding, pre-softmax projection share one (V, d_model) matrix, Sec. 3.4), which
the joint source-target BPE vocabulary allows; embeddings are multiplied by sqrt(d_model). Initialisation as
the reference implementations (tensor2tensor's uniform Glorot, the Annotated Transformer, fairseq): Xavier
uniform for every weight matrix, the shared embedding included, zero biases, LayerNorm weight 1.
Decoding is greedy (argmax at every step), which the BLEU figures say.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from hpc_dsgd.data.augment import M32, mix


class CounterDropout(nn.Module):
    """Dropout whose mask is a hash of (the owner's current key, this site, element index); see above."""

    def __init__(self, p: float, site: int, owner: "Seq2SeqTransformer") -> None:
        super().__init__()
        self.p, self.site = p, site
        self._owner = [owner]  # a list: not a submodule (no recursion in named_modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        key = self._owner[0]._key
        if key is None:
            return F.dropout(x, self.p, True)
        h = mix((key.to(torch.int64) + self.site) & M32)
        idx = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
        bits = mix((h + idx) & M32)  # uniform on [0, 2^32)
        keep = bits >= int(self.p * 2 ** 32)
        return torch.where(keep, x / (1.0 - self.p), torch.zeros((), dtype=x.dtype, device=x.device))


def sinusoidal_positions(T: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(T, d): PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)) (Vaswani et al., Sec. 3.5)."""
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe.to(dtype)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer over one joint vocabulary; ``forward(src, tgt_in) -> logits``."""

    def __init__(
        self,
        vocab_size: int,
        pad_id: int = 0,
        d_model: int = 256,
        nhead: int = 4,
        num_layers: int = 3,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} must be a multiple of nhead={nhead}")
        self.pad_id, self.d_model = pad_id, d_model
        self._key: torch.Tensor | None = None  # the dropout key of the current forward
        self.embed = nn.Embedding(vocab_size, d_model)  # shared: source, target, output projection
        enc = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, 0.0, batch_first=True)
        dec = nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, 0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(enc, num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, num_layers)
        sites = iter(range(1, 10 ** 6))
        self.drop_src, self.drop_tgt = CounterDropout(dropout, 0, self), CounterDropout(dropout, next(sites), self)
        for layer in list(self.encoder.layers) + list(self.decoder.layers):  # residual dropout after each sub-layer
            layer.dropout = nn.Identity()  # no feed-forward-inner dropout
            for name in ("dropout1", "dropout2", "dropout3"):
                if hasattr(layer, name):
                    setattr(layer, name, CounterDropout(dropout, next(sites), self))
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def _embed(self, ids: torch.Tensor, drop: nn.Module) -> torch.Tensor:
        x = self.embed(ids) * math.sqrt(self.d_model)  # (B, T, d)
        return drop(x + sinusoidal_positions(ids.shape[1], self.d_model, ids.device, x.dtype))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, S, d), source padding mask (B, S), True = pad)."""
        src_pad = src == self.pad_id
        return self.encoder(self._embed(src, self.drop_src), src_key_padding_mask=src_pad), src_pad

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_pad: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the next token at every target position (causal)."""
        T = tgt_in.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=tgt_in.device), 1)  # True = may not attend
        y = self.decoder(self._embed(tgt_in, self.drop_tgt), memory, tgt_mask=causal, tgt_key_padding_mask=tgt_in == self.pad_id,
                         memory_key_padding_mask=src_pad)
        return F.linear(y, self.embed.weight)  # tied pre-softmax projection

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, key: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V); ``key`` (0-dim int64) makes the dropout masks counter-based (see the module doc)."""
        self._key = key
        try:
            memory, src_pad = self.encode(src)
            return self.decode(tgt_in, memory, src_pad)
        finally:
            self._key = None


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, bos_id: int, eos_id: int,
                  max_len: int | None = None) -> list[list[int]]:
    """Greedy translation of a padded source batch (B, S): at each step the argmax token, until every
    sentence has produced ``<eos>`` or ``max_len`` tokens (default S + 50). Returns the ids before <eos>."""
    was_training = model.training
    model.eval()
    try:
        B = src.shape[0]
        max_len = src.shape[1] + 50 if max_len is None else max_len
        memory, src_pad = model.encode(src)
        ys = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            nxt = model.decode(ys, memory, src_pad)[:, -1].argmax(-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, model.pad_id), nxt)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        out = []
        for row in ys[:, 1:].tolist():
            out.append(row[:row.index(eos_id)] if eos_id in row else [t for t in row if t != model.pad_id])
        return out
    finally:
        model.train(was_training)


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, pad_id: int, epsilon: float = 0.1,
                        dims: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(smoothed loss sum, NLL sum, token count) over the non-pad target positions: 0-dim tensors, or
    summed over ``dims`` only (e.g. dims=(1, 2) of (k, B, T) targets: one sum per replica).

    Per token: (1 - eps) * NLL(target) + eps * mean over the vocabulary of -log p (uniform smoothing, as
    Szegedy et al. 2016 and torch's ``cross_entropy(label_smoothing=eps)``). The logits of positions whose
    target is ``pad_id`` are replaced by zeros before anything is computed from them, and their terms are
    dropped: they contribute nothing to the loss or its gradient, whatever they hold (inf included). Fixed
    shapes throughout (no boolean indexing), so the loss also runs under ``torch.func.vmap`` over replicas.
    Divide by the token count for the mean; exp(NLL / tokens) is the perplexity."""
    keep = target != pad_id  # (B, T)
    z = torch.where(keep[..., None], logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    lp = F.log_softmax(z.float(), dim=-1)  # (B, T, V)
    nll = -lp.gather(-1, target[..., None]).squeeze(-1)  # (B, T)
    smooth = -lp.mean(dim=-1)
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    loss = torch.where(keep, (1.0 - epsilon) * nll + epsilon * smooth, zero)
    nll = torch.where(keep, nll, zero).detach()
    if dims is None:
        return loss.sum(), nll.sum(), keep.sum()
    return loss.sum(dims), nll.sum(dims), keep.sum(dims)
