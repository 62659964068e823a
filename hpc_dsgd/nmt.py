"""Translation pieces the Multi30k workload needs besides the model: the inverse-square-root learning rate
(Vaswani et al. 2017, Eq. 3, with the paper's warm-up scaling), validation loss / perplexity and BLEU.

BLEU is sacrebleu's corpus BLEU with its defaults (BLEU-4, 13a tokenisation, case-sensitive, brevity
penalty, exponential smoothing) on detokenised greedy translations against the single reference per
sentence; 100 means every hypothesis equals its reference.
"""

from __future__ import annotations

import math

import torch

from hpc_dsgd.data.multi30k import EncodedPairs, SubwordTokenizer
from hpc_dsgd.models.transformer import Seq2SeqTransformer, greedy_decode, label_smoothed_loss


def scaled_warmup_steps(n: int, local_batch: int, warmup_at_64: int = 4000) -> int:
    """Warm-up steps for global mini-batch n * local_batch: 4000 at mini-batch 64, scaled down linearly
    with the global mini-batch (Kong et al. 2021, Sec. 4.2); at least 1."""
    return max(1, round(warmup_at_64 * 64 / (n * local_batch)))


def inverse_sqrt_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """lr(step) = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step counted from 1."""
    step = max(step, 1)
    return scale * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0..100) of detokenised hypotheses against one reference each."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@torch.no_grad()
def evaluate_loss(model: Seq2SeqTransformer, pairs: EncodedPairs, batch_size: int = 128, device=None,
                  epsilon: float = 0.1) -> dict:
    """Mean label-smoothed loss, mean NLL and perplexity exp(NLL) per target token (eval mode)."""
    was = model.training
    model.eval()
    loss = nll = 0.0
    tokens = 0
    try:
        for b in pairs.batches(batch_size):
            b = b.to(device) if device is not None else b
            ls, nl, nt = label_smoothed_loss(model(b.src, b.tgt_in), b.tgt_out, pairs.tok.pad_id, epsilon)
            loss, nll, tokens = loss + float(ls), nll + float(nl), tokens + int(nt)
    finally:
        model.train(was)
    return {"loss": loss / tokens, "nll": nll / tokens, "ppl": math.exp(nll / tokens), "tokens": tokens}


def translate(model: Seq2SeqTransformer, tok: SubwordTokenizer, pairs: EncodedPairs, batch_size: int = 128,
              device=None, indices=None) -> list[str]:
    """Greedy translations of the source sentences of ``pairs`` (all, or those at ``indices``), detokenised, in order."""
    out = []
    for b in pairs.batches(batch_size, indices):
        src = b.src.to(device) if device is not None else b.src
        out += [tok.decode(ids) for ids in greedy_decode(model, src, tok.bos_id, tok.eos_id)]
    return out


def evaluate_bleu(model: Seq2SeqTransformer, tok: SubwordTokenizer, pairs: EncodedPairs, references: list[str],
                  batch_size: int = 128, device=None) -> float:
    """BLEU of the greedy translations of ``pairs`` against ``references`` (the raw target sentences)."""
    return corpus_bleu(translate(model, tok, pairs, batch_size, device), references)
