"""Compression operators of compressed gossip (CHOCO-SGD): encode rows to compact messages, decode them.

Pure torch, no MPI. An operator turns r rows V (r, D) (float32) into r messages of M bytes each, a (r, M)
uint8 tensor, and back. What crosses MPI in CHOCO-SGD (modes.ChocoGossiper) is this tensor, so
`nbytes(D)` is exactly what a replica's message costs on the wire:

  topk     the c = max(1, round(ratio * D)) coordinates of largest |v_i| (ties: torch.topk's choice);
           message: c float32 values, then c int32 indices                          M = 8 c
  randomk  c coordinates drawn uniformly without replacement from counters (seed, global replica id,
           gossip step s): every rank can draw them again, so only the c float32 values travel
                                                                                     M = 4 c
  sign     scaled sign (Koloskova et al. 2019): Q(v) = (||v||_1 / D) sign(v), sign(0) := +1;
           message: the float32 scale, then D sign bits packed 8 per byte (bit 1 = +)  M = 4 + ceil(D / 8)
  qsgd     QSGD with s levels (Alistarh et al. 2017): Q(v)_i = ||v||_2 sign(v_i) xi_i / s, xi_i = l + 1 with
           probability a - l else l, a = s |v_i| / ||v||_2, l = floor(a), so E[Q(v)] = v (unbiased);
           the uniform numbers from counters (seed, replica, s); message: the float32 norm, then the
           signed level + s in [0, 2s] as b = ceil(log2(2s + 1)) bits per coordinate, packed
                                                                                     M = 4 + ceil(D b / 8)
topk and randomk keep the kept coordinates unscaled (a contraction with delta = c / D, as CHOCO needs);
QSGD is unbiased, not a contraction: CHOCO divides it by tau = 1 + min(D / s^2, sqrt(D) / s) (Koloskova
et al. 2019, Sec. 3), which is the mode's business, not the operator's.
"""
from __future__ import annotations

import math

import torch

OPERATORS = ("topk", "randomk", "sign", "qsgd")
_TAG = 0x63686F63  # 'choc': the counter stream of compression, apart from data augmentation's
_MASK = (1 << 64) - 1


def counter_generator(seed: int, replica: int, s: int, device: torch.device) -> torch.Generator:
    """A torch generator seeded from the counters (seed, global replica id, gossip step s): the same numbers on
    any rank split, resumed or not."""
    x = 0
    for v in (int(seed), int(replica), int(s), _TAG):  # splitmix64 over the counters: cheap, well mixed
        x = (x ^ v) + 0x9E3779B97F4A7C15 & _MASK
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
        x ^= x >> 31
    g = torch.Generator(device=device)
    g.manual_seed(x >> 1)
    return g


def pack_bits(vals: torch.Tensor, b: int) -> torch.Tensor:
    """(r, D) integers in [0, 2^b) -> (r, ceil(D b / 8)) uint8, most significant bit first."""
    r, D = vals.shape
    shifts = torch.arange(b - 1, -1, -1, device=vals.device, dtype=torch.int32)
    bits = ((vals.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(r, D * b)
    pad = (-D * b) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(r, pad)], dim=1)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], device=vals.device, dtype=torch.int32)
    return (bits.view(r, -1, 8) * weights).sum(dim=2).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, D: int, b: int) -> torch.Tensor:
    """Inverse of pack_bits: (r, ceil(D b / 8)) uint8 -> (r, D) int64."""
    r = packed.shape[0]
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.int32)
    bits = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(r, -1)[:, :D * b]
    weights = (1 << torch.arange(b - 1, -1, -1, device=packed.device, dtype=torch.int64))
    return (bits.view(r, D, b).to(torch.int64) * weights).sum(dim=2)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(r, 4 c) bytes -> (r, c) of a 4-byte dtype (through a flat copy: a byte slice's row stride need not be
    a multiple of 4)."""
    return t.reshape(-1).clone().view(dtype).view(t.shape[0], -1)


class Operator:
    name = "operator"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def nbytes(self, D: int) -> int:  # pragma: no cover
        raise NotImplementedError

    def encode(self, V: torch.Tensor, replicas, s: int) -> torch.Tensor:  # pragma: no cover
        """(r, D) float32 rows of global replicas `replicas` at gossip step s -> (r, nbytes(D)) uint8."""
        raise NotImplementedError

    def decode(self, msg: torch.Tensor, replicas, s: int, D: int) -> torch.Tensor:  # pragma: no cover
        """(r, nbytes(D)) uint8 -> (r, D) float32: Q(v) of each row."""
        raise NotImplementedError


class TopK(Operator):
    name = "topk"

    def __init__(self, ratio: float, seed: int = 0):
        super().__init__(seed)
        self.ratio = ratio

    def count(self, D: int) -> int:
        return min(D, max(1, round(self.ratio * D)))

    def nbytes(self, D):
        return 8 * self.count(D)

    def encode(self, V, replicas, s):
        c = self.count(V.shape[1])
        idx = V.abs().topk(c, dim=1, sorted=False).indices
        return torch.cat([_bytes(V.gather(1, idx)), _bytes(idx.to(torch.int32))], dim=1)

    def decode(self, msg, replicas, s, D):
        c = self.count(D)
        vals, idx = _as(msg[:, :4 * c], torch.float32), _as(msg[:, 4 * c:], torch.int32).long()
        return torch.zeros(msg.shape[0], D, dtype=torch.float32, device=msg.device).scatter_(1, idx, vals)


class RandomK(TopK):
    name = "randomk"

    def nbytes(self, D):
        return 4 * self.count(D)

    def indices(self, replicas, s: int, D: int, device) -> torch.Tensor:
        c = self.count(D)
        rows = [torch.randperm(D, generator=counter_generator(self.seed, i, s, torch.device("cpu")))[:c]
                for i in replicas]
        return torch.stack(rows).to(device) if rows else torch.zeros(0, c, dtype=torch.int64, device=device)

    def encode(self, V, replicas, s):
        return _bytes(V.gather(1, self.indices(replicas, s, V.shape[1], V.device)))

    def decode(self, msg, replicas, s, D):
        idx = self.indices(replicas, s, D, msg.device)
        return torch.zeros(msg.shape[0], D, dtype=torch.float32, device=msg.device).scatter_(1, idx, _as(msg, torch.float32))


class Sign(Operator):
    name = "sign"

    def nbytes(self, D):
        return 4 + math.ceil(D / 8)

    def encode(self, V, replicas, s):
        scale = (V.abs().sum(dim=1, dtype=torch.float64) / V.shape[1]).to(torch.float32)
        return torch.cat([_bytes(scale.unsqueeze(1)), pack_bits((V >= 0).to(torch.int32), 1)], dim=1)

    def decode(self, msg, replicas, s, D):
        scale = _as(msg[:, :4], torch.float32)  # (r, 1)
        signs = unpack_bits(msg[:, 4:], D, 1).to(torch.float32) * 2 - 1
        return signs * scale


class QSGD(Operator):
    name = "qsgd"

    def __init__(self, levels: int, seed: int = 0):
        super().__init__(seed)
        self.s = levels
        self.b = math.ceil(math.log2(2 * levels + 1))

    def nbytes(self, D):
        return 4 + math.ceil(D * self.b / 8)

    def encode(self, V, replicas, s):
        norm = V.pow(2).sum(dim=1, dtype=torch.float64).sqrt().to(torch.float32)  # (r,)
        a = V.abs() / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(1) * self.s
        low = a.floor()
        u = torch.stack([torch.rand(V.shape[1], generator=counter_generator(self.seed, i, s, torch.device("cpu")))
                         for i in replicas]).to(V.device) if len(V) else torch.zeros_like(V)
        level = (low + (u < a - low).to(low.dtype)).clamp_(max=self.s) * torch.where(V < 0, -1.0, 1.0)
        return torch.cat([_bytes(norm.unsqueeze(1)), pack_bits((level + self.s).to(torch.int32), self.b)], dim=1)

    def decode(self, msg, replicas, s, D):
        norm = _as(msg[:, :4], torch.float32)  # (r, 1)
        level = unpack_bits(msg[:, 4:], D, self.b).to(torch.float32) - self.s
        return norm * level / self.s

    def choco_scale(self, D: int) -> float:
        """1 / tau, tau = 1 + min(D / s^2, sqrt(D) / s): QSGD / tau is a contraction (CHOCO-SGD, Sec. 3)."""
        return 1.0 / (1.0 + min(D / self.s ** 2, math.sqrt(D) / self.s))


def make_operator(name: str, ratio: float = 0.01, levels: int = 16, seed: int = 0) -> Operator:
    if name == "topk":
        return TopK(ratio, seed)
    if name == "randomk":
        return RandomK(ratio, seed)
    if name == "sign":
        return Sign(seed)
    if name == "qsgd":
        return QSGD(levels, seed)
    raise ValueError(f"compression={name!r}: choose one of none, {', '.join(OPERATORS)}")
