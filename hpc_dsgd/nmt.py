"""Translation pieces the Multi30k workload needs besides the model: validation loss / perplexity and BLEU
(the inverse-square-root learning rate of Vaswani et al. 2017, Eq. 3, with the paper's warm-up scaling
lives in schedule.py and is re-exported here).

BLEU is sacrebleu's corpus BLEU with its defaults (BLEU-4, 13a tokenisation, case-sensitive, brevity
penalty, exponential smoothing) on detokenised greedy translations against the single reference per
sentence; 100 means every hypothesis equals its reference.
"""

from __future__ import annotations

import math

import torch

from hpc_dsgd.data.multi30k import EncodedPairs, SubwordTokenizer
from hpc_dsgd.models.transformer import Seq2SeqTransformer, greedy_decode, label_smoothed_loss
from hpc_dsgd.schedule import inverse_sqrt_lr, scaled_warmup_steps  # noqa: F401 (part of this module's API)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0..100) of detokenised hypotheses against one reference each."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


@torch.no_grad()
def loss_sums(model: Seq2SeqTransformer, pairs: EncodedPairs, batch_size: int = 128, device=None,
              epsilon: float = 0.1, indices=None) -> tuple[float, float, int]:
    """(label-smoothed loss, NLL, target tokens) summed over the pairs (all, or those at ``indices``), eval mode."""
    was = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for b in pairs.batches(batch_size, indices):
            b = b.to(device) if device is not None else b
            ls, nl, nt = label_smoothed_loss(model(b.src, b.tgt_in), b.tgt_out, pairs.tok.pad_id, epsilon)
            tot += torch.stack([ls.double(), nl.double(), nt.double()])
    finally:
        model.train(was)
    loss, nll, tokens = tot.tolist()
    return loss, nll, int(tokens)


def evaluate_loss(model: Seq2SeqTransformer, pairs: EncodedPairs, batch_size: int = 128, device=None,
                  epsilon: float = 0.1) -> dict:
    """Mean label-smoothed loss, mean NLL and perplexity exp(NLL) per target token (eval mode)."""
    loss, nll, tokens = loss_sums(model, pairs, batch_size, device, epsilon)
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
