"""Neural machine translation (paper Sec. 4.2, 4.4): Multi30k English -> German (task 1), the Transformer
down-scaled by 2 (models/transformer.py), Adam (0.9, 0.98, 1e-9) with the inverse-square-root schedule,
label smoothing 0.1, local mini-batch 64 sentences; the whole of training is one phase.

Mini-batches: replica j's sentence pairs come from its shard of the epoch permutation, as for images. All
k replicas of a rank are padded to ONE length per iteration, the longest source and target among the
mini-batches of ALL n replicas at that iteration (every rank computes it from the permutation), so the
shapes, and with them every kernel's rounding, do not depend on the rank split. Dropout masks are
counter-based in (seed, global replica id, iteration) (the model's `key` input). The loss of a replica is
its label-smoothed loss per target token (padding excluded), as a per-replica torch reference would compute it.

Evaluation (every eval_every epochs and at the end), into the trace's epoch rows:
  val_loss_avg, val_nll_avg, val_ppl_avg   the averaged model on the validation set (label-smoothed loss,
                                           NLL and perplexity exp(NLL) per target token);
  bleu_avg                                 sacrebleu corpus BLEU of the averaged model's GREEDY translations
                                           of the test set (test_2016_flickr) against its references (with
                                           validation_split > 0: of the validation set; docs/partitions.md);
  val_ppl_local_mean, val_ppl_local_std    perplexity of every local model on local_eval_samples
                                           validation pairs (all if 0): mean and std over the n replicas.
"""
from __future__ import annotations

import math
import os

import sacrebleu
import torch

from ..comm import allreduce_scalars, global_mean
from ..data.augment import counter_hash
from ..data.base import DataError
from ..data.multi30k import EncodedPairs, SubwordTokenizer, copy_tokenizer, load_multi30k, tokenizer_for_run
from ..data.partition import DataPartition
from ..models.transformer import Seq2SeqTransformer, greedy_decode, label_smoothed_loss
from ..optim import make_optimizer
from ..rundir import RunDir
from ..schedule import Schedule
from ..signals import StopBeforeStart

STREAM_DROPOUT = 3  # counter-hash stream of the dropout keys (0-2 are the image crops and flips)
EVAL_BATCH = 128


# -- evaluation of one model (used by the workload below, and usable alone: tests, notebooks) ------------
# BLEU is sacrebleu's corpus BLEU with its defaults (BLEU-4, 13a tokenisation, case-sensitive, brevity
# penalty, exponential smoothing) on detokenised greedy translations against the single reference per
# sentence; 100 means every hypothesis equals its reference.
def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0..100) of detokenised hypotheses against one reference each."""
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


class Translation:
    name = "translation"
    samples = "sentences"  # throughput column: sentences_per_s
    capturable = False  # the padded length changes from iteration to iteration

    def __init__(self, cfg, corpus, tok: SubwordTokenizer, device, tokenizer_path: str = ""):
        self.cfg, self.tok, self.device = cfg, tok, torch.device(device)
        self.tokenizer_path = tokenizer_path
        self.train = EncodedPairs(corpus.train, tok, cfg.max_len)
        self.val = EncodedPairs(corpus.val, tok, cfg.max_len)
        self.test = EncodedPairs(corpus.test, tok, cfg.max_len)
        self.test_refs = list(corpus.test.tgt)
        self.num_train = len(self.train)
        self.partition = DataPartition("iid", cfg.n, cfg.seed, self.num_train, cfg.batch_size)  # config refuses non-iid
        # validation_split > 0: BLEU of the validation set (Multi30k's own, val.en/.de) instead of the test set
        self.eval_set = "validation" if cfg.validation_split > 0 else "test"
        self.bleu_pairs, self.bleu_refs = (self.val, list(corpus.val.tgt)) if self.eval_set == "validation" else \
            (self.test, list(corpus.test.tgt))
        whole = self.train.batch(range(self.num_train))  # every training pair, padded once
        self.src_all, self.tgt_in_all, self.tgt_out_all = (t.to(self.device) for t in (whole.src, whole.tgt_in, whole.tgt_out))
        pad = tok.pad_id
        self.src_len = (whole.src != pad).sum(1).to(self.device)
        self.tgt_len = (whole.tgt_out != pad).sum(1).to(self.device)
        self.all_replicas = torch.arange(cfg.n, device=self.device)  # global ids, for the padded length
        g = torch.Generator().manual_seed(cfg.seed + 17)
        self.local_idx = torch.randperm(len(self.val), generator=g)[:cfg.local_eval_samples or None].tolist()

    @classmethod
    def load(cls, cfg, world, run_dir: str, how: str = "fresh") -> "Translation":
        """Every rank reads the text; rank 0 trains the tokenizer (or keeps the run's on resume, or copies
        the parent run's on a branch) into run_dir/tokenizer.json, and every rank loads that file."""
        corpus = load_multi30k(cfg.data_dir)
        path, err = RunDir(run_dir).tokenizer, None
        if world.rank == 0:
            try:
                parent = RunDir.of_checkpoint(cfg.branch_from).tokenizer if cfg.branch_from else ""
                os.makedirs(run_dir, exist_ok=True)
                if how == "fresh" and os.path.isfile(path):
                    os.remove(path)  # a fresh start trains its own (vocab_size may have changed)
                elif how == "branch" and os.path.isfile(parent):
                    copy_tokenizer(parent, path)
                tokenizer_for_run(run_dir, corpus.train, cfg.vocab_size)  # resume: the run's own, its model's vocabulary
            except (OSError, ValueError) as e:
                err = f"cannot prepare the tokenizer {path}: {e}"
            except StopBeforeStart as e:  # every rank stops alike (the others wait in the bcast below)
                err = e
        err = world.comm.bcast(err, root=0)
        if isinstance(err, StopBeforeStart):
            raise err
        if err:
            raise DataError(err)
        return cls(cfg, corpus, SubwordTokenizer.load(path), world.device, path)

    def build_model(self) -> Seq2SeqTransformer:
        c = self.cfg
        return Seq2SeqTransformer(self.tok.vocab_size, self.tok.pad_id, d_model=c.d_model, nhead=c.heads,
                                  num_layers=c.layers, dim_feedforward=c.d_ff, dropout=c.dropout)

    def optimizer(self, k: int, d: int, device):
        return make_optimizer(self.cfg, k, d, device)

    def schedule(self) -> Schedule:
        return Schedule.from_config(self.cfg, self.num_train)

    def trace_attrs(self) -> dict:
        return {"workload": self.name, "vocab_size": self.tok.vocab_size, "tokenizer": self.tokenizer_path,
                "partition": "iid", "train_samples": self.num_train, "eval_set": self.eval_set,
                "eval_samples": len(self.bleu_pairs)}

    def trace_arrays(self) -> dict:
        return {}

    # -- training ----------------------------------------------------------------------------
    def batch(self, reps, idx: torch.Tensor):
        """((src, tgt_in, dropout keys), tgt_out) of the k replicas: (k, B, S), (k, B, T), (k,), (k, B, T)."""
        everyone = reps.batch_indices(reps.b_dev, self.all_replicas)  # (n, B): every replica's pairs
        S, T = torch.stack([self.src_len[everyone].max(), self.tgt_len[everyone].max()]).tolist()
        key = counter_hash(self.cfg.seed, reps.ids, reps.t_dev, torch.zeros_like(reps.ids), STREAM_DROPOUT)
        return (self.src_all[idx, :S], self.tgt_in_all[idx, :T], key), self.tgt_out_all[idx, :T]

    def loss(self, logits: torch.Tensor, tgt_out: torch.Tensor):
        """(sum over replicas of the per-token label-smoothed loss, correct next tokens, target tokens)."""
        ls, _, ntok = label_smoothed_loss(logits, tgt_out, self.tok.pad_id, self.cfg.label_smoothing, dims=(1, 2))
        keep = tgt_out != self.tok.pad_id
        correct = ((logits.argmax(-1) == tgt_out) & keep).sum()
        return (ls / ntok.clamp(min=1)).sum(), correct, ntok.sum()

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def local_ppl(self, reps) -> torch.Tensor:
        """Validation perplexity (k,) of every local replica on the local_eval_samples pairs."""
        nll = torch.zeros(reps.k, dtype=torch.float64, device=self.device)
        tokens = 0
        for b in self.val.batches(EVAL_BATCH, self.local_idx):
            b = b.to(self.device)
            with reps.autocast():
                out = reps.exec.forward(reps.P, reps.Bf, (b.src, b.tgt_in), train=False, shared=True)  # (k, B, T, V)
            tgt = b.tgt_out.expand(reps.k, *b.tgt_out.shape)
            nll += label_smoothed_loss(out, tgt, self.tok.pad_id, self.cfg.label_smoothing, dims=(1, 2))[1].double()
            tokens += b.ntokens
        return torch.exp(nll / max(tokens, 1))

    def bleu(self, world, model) -> float:
        """Test BLEU of `model`'s greedy translations (test set split over ranks; collective). With
        validation_split > 0: BLEU of the validation set instead (eval_set)."""
        pairs = self.bleu_pairs
        mine = list(range(world.rank, len(pairs), world.ranks))
        hyps = translate(model, self.tok, pairs, EVAL_BATCH, self.device, mine)
        parts = world.comm.gather((mine, hyps), root=0)
        score = None
        if world.rank == 0:
            ordered = [""] * len(pairs)
            for ids, hs in parts:
                for i, h in zip(ids, hs):
                    ordered[i] = h
            score = corpus_bleu(ordered, self.bleu_refs)
        return world.comm.bcast(score, root=0)

    def evaluate(self, world, reps) -> dict:
        reps.eval_x.copy_(global_mean(world, reps.X).to(reps.eval_x.dtype))  # xbar
        model = reps.eval_model
        mine = list(range(world.rank, len(self.val), world.ranks))
        loss, nll, tok = loss_sums(model, self.val, EVAL_BATCH, self.device, self.cfg.label_smoothing, mine)
        ppl = self.local_ppl(reps)
        bleu = self.bleu(world, model)
        s = allreduce_scalars(world.comm, [loss, nll, tok, float(ppl.sum()), float(ppl.pow(2).sum())])
        n = world.n
        mean = s[3] / n
        return {"val_loss_avg": s[0] / s[2], "val_nll_avg": s[1] / s[2], "val_ppl_avg": math.exp(s[1] / s[2]),
                "bleu_avg": bleu, "val_ppl_local_mean": mean,
                "val_ppl_local_std": math.sqrt(max(s[4] / n - mean * mean, 0.0))}

    def describe(self, m: dict | None) -> str:
        bleu = "BLEU" if self.eval_set == "test" else "val BLEU"
        if m is None:
            return f"val ppl(avg)      -  {bleu}     -  ppl(local)      - "
        return (f"val ppl(avg) {m['val_ppl_avg']:7.2f} {bleu} {m['bleu_avg']:5.2f} "
                f"ppl(local) {m['val_ppl_local_mean']:7.2f}")

