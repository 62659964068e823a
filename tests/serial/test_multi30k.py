"""Claims about the Multi30k pieces (files the tests write in the official format, no network): the loader
reads plain and gzipped files in both layouts and names missing or damaged files; the subword tokenizer
round-trips text and survives a save/load beside the run; padding never contributes to the loss; BLEU
equals sacrebleu's and an independent computation, 100 for a perfect translation; the down-scaled
Transformer has the base model's architecture at half size, and Adam lowers its loss on a parallel corpus."""
from __future__ import annotations

import gzip
import math
import warnings
from collections import Counter

import pytest
import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from hpc_dsgd.config import Config
from hpc_dsgd.data.augment import counter_hash
from hpc_dsgd.data.base import DataError
from hpc_dsgd.data.multi30k import (
    EncodedPairs,
    ParallelText,
    SubwordTokenizer,
    load_multi30k,
    pad_batch,
    tokenizer_for_run,
)
from hpc_dsgd.models.transformer import Seq2SeqTransformer, greedy_decode, label_smoothed_loss, sinusoidal_positions
from hpc_dsgd.optim import LocalAdam
from hpc_dsgd.schedule import Schedule, inverse_sqrt_lr, scaled_warmup_steps
from hpc_dsgd.workloads.translation import corpus_bleu, evaluate_bleu, evaluate_loss

from multi30k_corpus import corpus, fabricate  # tests/multi30k_corpus.py

torch.set_num_threads(1)

def test_loader_reads_plain_and_gzip_in_both_layouts(tmp_path):
    splits = fabricate(tmp_path)
    d = load_multi30k(str(tmp_path))
    assert (len(d.train), len(d.val), len(d.test)) == (48, 6, 6)
    assert d.train.src == [p[0] for p in splits["train"]] and d.train.tgt == [p[1] for p in splits["train"]]
    assert d.test.tgt[-1] == splits["test_2016_flickr"][-1][1] and "Straße" in d.test.tgt[-1]
    assert d.val.src == [p[0] for p in splits["val"]]


@pytest.mark.parametrize("damage, needle", [
    ("missing", "missing val.de, test_2016_flickr.en"),
    ("misaligned", "train.de has 47"),
    ("latin1", "line 2: not UTF-8"),
    ("badgzip", "cannot be read"),
    ("blank", "line 3: blank line"),
])
def test_missing_or_damaged_files_named(tmp_path, damage, needle):
    fabricate(tmp_path)
    raw = tmp_path / "data" / "task1" / "raw"
    if damage == "missing":
        (tmp_path / "val.de.gz").unlink()
        (raw / "test_2016_flickr.en.gz").unlink()
    elif damage == "misaligned":
        lines = (tmp_path / "train.de").read_text(encoding="utf-8").splitlines()
        (tmp_path / "train.de").write_text("\n".join(lines[:47]) + "\n", encoding="utf-8")
    elif damage == "latin1":
        (tmp_path / "train.de").write_bytes("Ein Hund\nEin Mädchen\n".encode("latin-1"))
    elif damage == "badgzip":
        (tmp_path / "val.en.gz").write_bytes(gzip.compress(b"A dog\n")[:12])
    else:
        (tmp_path / "train.en").write_text("A dog\nA man\n\nA girl\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_multi30k(str(tmp_path))
    msg = str(e.value)
    assert needle in msg and "github.com/multi30k/dataset" in msg and "\n" not in msg, msg
    with pytest.raises(DataError, match="does not exist"):
        load_multi30k(str(tmp_path / "nope"))


@pytest.fixture(scope="module")
def tok() -> SubwordTokenizer:
    pairs = corpus()[:48]
    return SubwordTokenizer.train([p[0] for p in pairs] + [p[1] for p in pairs], vocab_size=400, min_frequency=1)


def test_tokenizer_round_trips_text_with_fixed_specials(tok, tmp_path):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    texts = [t for p in corpus() for t in p] + ["Ça coûte 5 €, 中文 und  doppelte  Leerzeichen\tTab!", ""]
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
    ids = tok.encode("Ein Hund läuft im Wasser.")
    assert len(ids) < len("Ein Hund läuft im Wasser.")  # merges learned: fewer subwords than characters
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id, 7]) == "Ein Hund läuft im Wasser."
    # saved beside the run and loaded from there (no retraining), same ids
    train = ParallelText([p[0] for p in corpus()[:48]], [p[1] for p in corpus()[:48]])
    t1 = tokenizer_for_run(str(tmp_path / "run"), train, vocab_size=400)
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    t2 = tokenizer_for_run(str(tmp_path / "run"), ParallelText(["x"], ["y"]), vocab_size=300)
    assert t2.vocab_size == t1.vocab_size and all(t2.encode(t) == t1.encode(t) for t in texts)
    # training is deterministic: ranks that each train on the same text get the same tokenizer
    assert tokenizer_for_run(str(tmp_path / "run2"), train, vocab_size=400).tok.to_str() == t1.tok.to_str()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        SubwordTokenizer.load(str(tmp_path / "bad.json"))


def test_padded_batches(tok):
    pairs = EncodedPairs(ParallelText(["A dog runs on the grass.", "Two women sit."],
                                      ["Ein Hund läuft auf dem Gras.", "Zwei Frauen."]), tok)
    b = pairs.batch([0, 1])
    s0, t1 = pairs.src[0], pairs.tgt[1]
    assert b.src.shape == (2, max(len(s) for s in pairs.src) + 1)
    assert b.src[0, :len(s0)].tolist() == s0 and b.src[0, len(s0)] == tok.eos_id
    assert b.tgt_in[:, 0].tolist() == [tok.bos_id] * 2
    assert b.tgt_out[1, :len(t1) + 1].tolist() == t1 + [tok.eos_id]
    assert torch.all(b.tgt_out[1, len(t1) + 1:] == tok.pad_id) and torch.all(b.tgt_in[1, len(t1) + 1:] == tok.pad_id)
    assert b.ntokens == int((b.tgt_out != tok.pad_id).sum()) == sum(len(t) + 1 for t in pairs.tgt)
    assert pad_batch([[5], [6, 7, 8]], 0).tolist() == [[5, 0, 0], [6, 7, 8]]


def test_label_smoothed_loss_ignores_padding():
    torch.manual_seed(0)
    B, T, V, pad = 3, 6, 11, 0
    target = torch.randint(1, V, (B, T))
    target[0, 4:] = pad
    target[2, 1:] = pad
    logits = torch.randn(B, T, V, requires_grad=True)
    loss, nll, ntok = label_smoothed_loss(logits, target, pad, 0.1)
    assert int(ntok) == int((target != pad).sum())
    ref = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), ignore_index=pad, label_smoothing=0.1,
                          reduction="sum")  # independent reference: torch's own definition
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(nll, F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), ignore_index=pad,
                                               reduction="sum"), atol=1e-5)
    loss.backward()
    mask = (target == pad)[..., None].expand_as(logits)
    assert torch.all(logits.grad[mask] == 0) and torch.any(logits.grad[~mask] != 0)
    changed = logits.detach().clone()
    changed[mask] = torch.randn(int(mask.sum())) * 100  # anything at pad positions, even inf
    changed[0, 5, 3] = float("inf")
    assert torch.equal(label_smoothed_loss(changed, target, pad, 0.1)[0], loss.detach())


def test_padding_never_changes_the_model_loss(tok):
    torch.manual_seed(1)
    model = Seq2SeqTransformer(tok.vocab_size, tok.pad_id, d_model=32, nhead=2, num_layers=2, dim_feedforward=64).eval()
    pairs = EncodedPairs(ParallelText([p[0] for p in corpus()[:5]], [p[1] for p in corpus()[:5]]), tok)
    b = pairs.batch(range(5))
    with torch.no_grad():
        base = label_smoothed_loss(model(b.src, b.tgt_in), b.tgt_out, tok.pad_id)[0]
        def wide(x, k):  # more padding
            return torch.cat([x, torch.full((x.shape[0], k), tok.pad_id)], dim=1)

        more = label_smoothed_loss(model(wide(b.src, 7), wide(b.tgt_in, 4)), wide(b.tgt_out, 4), tok.pad_id)[0]
        alone = sum(label_smoothed_loss(model(pairs.batch([i]).src, pairs.batch([i]).tgt_in),
                                        pairs.batch([i]).tgt_out, tok.pad_id)[0] for i in range(5))
    assert torch.allclose(base, more, rtol=1e-5) and torch.allclose(base, alone, rtol=1e-5)


def _bleu_by_hand(hyps, refs):
    """BLEU-4 from its definition (Papineni et al. 2002): clipped n-gram precisions over the corpus,
    geometric mean, brevity penalty; whitespace tokens (what 13a gives for words without punctuation)."""
    match, total, c, r = [0] * 4, [0] * 4, 0, 0
    for h, ref in zip(hyps, refs):
        h, ref = h.split(), ref.split()
        c, r = c + len(h), r + len(ref)
        for n in range(1, 5):
            hn = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rn = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            match[n - 1] += sum(min(k, rn[g]) for g, k in hn.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


def test_bleu_matches_sacrebleu_and_definition():
    import sacrebleu

    hyps = ["the quick brown fox jumps over the dog", "a man rides a red bike in the park"]
    refs = ["the quick brown fox jumped over the lazy dog", "a man rides a bike in the big park"]
    got = corpus_bleu(hyps, refs)
    assert got == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert got == pytest.approx(_bleu_by_hand(hyps, refs), abs=1e-9)
    assert 20 < got < 80
    assert corpus_bleu(refs, refs) == pytest.approx(100.0, abs=1e-9)  # exp(mean log 1) up to rounding
    assert corpus_bleu(["Ein Hund läuft auf dem Gras."], ["Ein Hund läuft auf dem Gras."]) == pytest.approx(100.0, abs=1e-9)
    with pytest.raises(ValueError):
        corpus_bleu(hyps, refs[:1])


def _count(V, d, f, N):
    """Parameters of the tied encoder-decoder from the architecture: attention = Q, K, V, O projections
    with biases; FFN = two linears with biases; LayerNorm = weight + bias."""
    attn, ffn, ln = 4 * d * d + 4 * d, d * f + f + f * d + d, 2 * d
    return V * d + N * (attn + ffn + 2 * ln) + N * (2 * attn + ffn + 3 * ln)


def test_transformer_is_base_halved_tied_xavier_and_trains_shapes():
    V = 1000
    torch.manual_seed(0)
    m = Seq2SeqTransformer(V, pad_id=0)
    # by hand: embedding 256,000 + 3 x (encoder layer 789,760 + decoder layer 1,053,440); no output matrix (tied)
    assert sum(p.numel() for p in m.parameters()) == _count(V, 256, 1024, 3) == 5_785_600
    layer = m.encoder.layers[0]
    assert layer.self_attn.num_heads == 4 and layer.self_attn.embed_dim == 256
    assert layer.linear1.out_features == 1024 and len(m.encoder.layers) == len(m.decoder.layers) == 3
    assert not layer.norm_first  # post-norm, as in the paper
    bound = math.sqrt(6 / (V + 256))  # Xavier uniform of the shared embedding
    assert m.embed.weight.abs().max() <= bound
    assert float(m.embed.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert all(torch.all(p == 0) for n, p in m.named_parameters() if n.endswith("bias"))
    src, tgt = torch.randint(3, V, (2, 7)), torch.randint(3, V, (2, 5))
    src[1, 5:] = 0
    out = m(src, tgt)
    assert out.shape == (2, 5, V)
    label_smoothed_loss(out, tgt, 0)[0].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    pe = sinusoidal_positions(50, 256)
    assert torch.allclose(pe[7, 10], torch.tensor(math.sin(7 / 10000 ** (10 / 256)))) and pe[0, 1] == 1.0


def test_k_replicas_under_vmap_equal_k_separate_models():
    """The general batched path (torch.func.functional_call + vmap over a leading replica axis of the
    parameters, the batched executor of non-ResNet models) gives each replica its own loss and gradient."""
    from torch.func import grad

    torch.manual_seed(0)
    V, k = 40, 3
    models = [Seq2SeqTransformer(V, 0, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.0)
              for _ in range(k)]
    names = [n for n, _ in models[0].named_parameters()]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names}  # (k, ...)
    src, tgt_in, tgt_out = (torch.randint(3, V, (k, 4, L)) for L in (6, 5, 5))
    src[:, 1, 4:] = 0
    tgt_in[:, 2, 3:] = 0
    tgt_out[:, 2, 3:] = 0

    def loss_of(p, s, ti, to):
        return label_smoothed_loss(functional_call(models[0], p, (s, ti)), to, 0)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes a slow batching fallback for CPU attention
        losses = vmap(loss_of, randomness="different")(params, src, tgt_in, tgt_out)
        grads = vmap(grad(loss_of), randomness="different")(params, src, tgt_in, tgt_out)
    for i, m in enumerate(models):
        m.zero_grad()
        ref = label_smoothed_loss(m(src[i], tgt_in[i]), tgt_out[i], 0)[0]
        ref.backward()
        assert torch.allclose(losses[i], ref, atol=1e-5)
        for n, p in m.named_parameters():
            assert torch.allclose(grads[n][i], p.grad, atol=1e-5), n


def test_adam_lowers_the_loss_and_greedy_decoding_translates(tmp_path, tok):
    fabricate(tmp_path)
    d = load_multi30k(str(tmp_path))
    train = EncodedPairs(d.train, tok)
    torch.manual_seed(0)
    m = Seq2SeqTransformer(tok.vocab_size, tok.pad_id, d_model=32, nhead=2, num_layers=1, dim_feedforward=64,
                           dropout=0.0)  # CPU-sized; the defaults are tested above
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.9, 0.98), eps=1e-9)  # the paper's Adam
    before = evaluate_loss(m, train)
    b = train.batch(range(len(train)))
    for _ in range(40):
        loss, _, nt = label_smoothed_loss(m(b.src, b.tgt_in), b.tgt_out, tok.pad_id)
        opt.zero_grad()
        (loss / nt).backward()
        opt.step()
    after = evaluate_loss(m, train)
    assert after["loss"] < 0.5 * before["loss"] and after["nll"] < 0.1 * before["nll"], (before, after)
    assert after["ppl"] < before["ppl"] and after["ppl"] == pytest.approx(math.exp(after["nll"]))
    bleu = evaluate_bleu(m, tok, train, d.train.tgt)  # the corpus it learned (a pipeline check, not generalisation)
    assert bleu > 50, bleu
    hyp = greedy_decode(m, train.batch([0]).src, tok.bos_id, tok.eos_id, max_len=3)
    assert len(hyp) == 1 and len(hyp[0]) <= 3


def test_inverse_sqrt_schedule_and_warmup_scaling():
    assert scaled_warmup_steps(1, 64) == 4000 and scaled_warmup_steps(32, 64) == 125
    w, d = 125, 256
    lrs = [inverse_sqrt_lr(s, d, w) for s in range(1, 1000)]
    assert max(lrs) == lrs[w - 1] == pytest.approx(d ** -0.5 * w ** -0.5)
    assert lrs[9] == pytest.approx(10 * d ** -0.5 * w ** -1.5) and lrs[499] == pytest.approx(d ** -0.5 / math.sqrt(500))


def test_schedule_from_config_is_one_inverse_sqrt_phase():
    cfg = Config(n=32, batch_size=64, epochs=10.0, lr_schedule="inverse_sqrt", decay_fractions=[], policies=["gossip"],
                 warmup_epochs=0.0, d_model=256, lr_scale=2.0)
    s = Schedule.from_config(cfg, 29000)
    assert (s.iters_per_epoch, s.total_iters, s.warmup_iters) == (14, 140, 125)
    assert s.phase_bounds() == [(0, 140)] and {s.phase(t) for t in range(140)} == {1}
    assert [s.lr(t) for t in range(140)] == [inverse_sqrt_lr(t + 1, 256, 125, 2.0) for t in range(140)]


def test_local_adam_is_torch_adam_on_every_row():
    """optim.LocalAdam on a (k, d) block = one torch.optim.Adam per row, bitwise (changing lr, weight decay)."""
    k, d = 3, 40
    cfg = Config(optimizer="adam", adam_betas=[0.9, 0.98], adam_eps=1e-9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    P = torch.randn(k, d, generator=g)
    rows = [torch.nn.Parameter(P[i].clone()) for i in range(k)]
    opts = [torch.optim.Adam([r], lr=1.0, betas=(0.9, 0.98), eps=1e-9, weight_decay=1e-3) for r in rows]
    local = LocalAdam(cfg, k, d, "cpu")
    for t in range(12):
        G = torch.randn(k, d, generator=g) * (10.0 ** -(t % 4))
        lr = 1e-3 * (t + 1)
        for i, (r, o) in enumerate(zip(rows, opts)):
            r.grad = G[i].clone()
            o.param_groups[0]["lr"] = lr
            o.step()
        local.step(P, G.clone(), torch.tensor(-lr), lr, t)
    for i, (r, o) in enumerate(zip(rows, opts)):
        assert torch.equal(P[i], r.detach())
        assert torch.equal(local.state["M"][i], o.state[r]["exp_avg"])
        assert torch.equal(local.state["V"][i], o.state[r]["exp_avg_sq"])


def test_counter_dropout_masks_are_per_key_and_equal_under_vmap():
    """Dropout keyed by (seed, replica, iteration): k replicas under vmap get exactly the masks each gets
    alone; another key gives another mask; the drop rate is p; evaluation ignores the key."""
    torch.manual_seed(0)
    m = Seq2SeqTransformer(50, 0, d_model=16, nhead=2, num_layers=1, dim_feedforward=32, dropout=0.3).train()
    src, tgt = torch.randint(3, 50, (3, 4, 6)), torch.randint(3, 50, (3, 4, 5))
    keys = counter_hash(7, torch.arange(3), 11, torch.zeros(3, dtype=torch.int64), 3)
    params = {n: p.detach().expand(3, *p.shape) for n, p in m.named_parameters()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes a slow batching fallback for CPU attention
        batched = vmap(lambda p, s, t, key: functional_call(m, p, (s, t, key)))(params, src, tgt, keys)
        alone = torch.stack([m(src[i], tgt[i], keys[i]) for i in range(3)])
        again = m(src[0], tgt[0], keys[0])
        other = m(src[0], tgt[0], keys[1])
        m.eval()
        evals = [m(src[0], tgt[0], keys[0]), m(src[0], tgt[0], keys[1])]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, alone[0]) and not torch.allclose(other, alone[0])
    assert torch.equal(evals[0], evals[1])
    drop = m.drop_src
    x = torch.ones(200_000)
    m._key = keys[0]
    drop.train()
    y = drop(x)
    m._key = None
    rate = float((y == 0).float().mean())
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / x.numel()), rate
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))


def test_a_line_longer_than_a_sentence_is_refused_with_file_and_line(tmp_path):
    """One 1 MB "word" stalled the tokenizer's training for minutes to hours: refused at reading."""
    from hpc_dsgd.data.multi30k import MAX_LINE_CHARS

    fabricate(tmp_path)
    lines = (tmp_path / "train.en").read_text(encoding="utf-8").splitlines()
    lines[2] = "x" * 1_000_000
    (tmp_path / "train.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_multi30k(str(tmp_path))
    assert f"{tmp_path / 'train.en'}, line 3: 1000000 characters, more than the {MAX_LINE_CHARS}" in str(e.value)
    lines[2] = "x" * MAX_LINE_CHARS  # the longest admitted line
    (tmp_path / "train.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_multi30k(str(tmp_path)).train.src[2] == lines[2]


def test_tampered_tokenizer_file_is_one_message(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    text = path.read_text(encoding="utf-8")
    for bad in (text[:len(text) // 2], text.replace('"<pad>"', '"<pad'), "\ufffe" + text, b"\xff\xfe"):
        path.write_bytes(bad if isinstance(bad, bytes) else bad.encode("utf-8", "surrogatepass"))
        with pytest.raises(DataError) as e:
            SubwordTokenizer.load(str(path))
        msg = str(e.value)
        assert f"tokenizer file {path} is not a valid tokenizers JSON file" in msg and "\n" not in msg, msg


def _bpe_children() -> list[int]:
    import os

    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and any(c.endswith(b"bpe.py") for c in cmd):
            out.append(int(pid))
    return out


def test_stop_signal_during_tokenizer_training_stops_it_at_once():
    """Under a StopRequest (a run's preparation) the tokenizer trains in a child process: SIGTERM stops it
    within a second (StopBeforeStart, the child killed) although the training would take far longer; the
    tokenizer trained that way is the one trained in this process."""
    import os
    import random
    import signal
    import threading
    import time

    from hpc_dsgd.signals import StopBeforeStart, StopRequest

    pairs = corpus()
    texts = [p[0] for p in pairs] + [p[1] for p in pairs]
    with StopRequest():
        assert SubwordTokenizer.train(texts, 400, 1).tok.to_str() == SubwordTokenizer.train(texts, 400, 1).tok.to_str()
    rng = random.Random(0)
    slow = ["".join(rng.choice("abcdefghij") for _ in range(2000)) for _ in range(2000)]  # about a minute of BPE
    with StopRequest():
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        with pytest.raises(StopBeforeStart, match="SIGTERM during training the Multi30k tokenizer"):
            SubwordTokenizer.train(slow, 8000)
        assert time.monotonic() - t0 < 5
    assert _bpe_children() == []  # killed and reaped


def test_a_gzip_bomb_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    """A .gz that expands beyond MAX_FILE_BYTES (here lowered to 1 MB: 20 MB of one line in 20 kB) is refused
    naming the file, after reading at most the bound."""
    from hpc_dsgd.data import multi30k

    fabricate(tmp_path)
    monkeypatch.setattr(multi30k, "MAX_FILE_BYTES", 1 << 20)
    with gzip.open(tmp_path / "val.en.gz", "wb") as f:
        f.write(b"a" * (20 << 20))
    assert (tmp_path / "val.en.gz").stat().st_size < 100_000
    with pytest.raises(DataError, match=f"{tmp_path / 'val.en.gz'} holds more than 1 MB of text"):
        load_multi30k(str(tmp_path))
