"""The benchmark command as a user runs it: `mpiexec -n 4 python -m hpc_dsgd bench ... --json FILE` on the
CPU writes, per mode, ms per iteration and samples/s (images/s; sentences/s with --workload translation),
and the run's description, all with the right types."""
from __future__ import annotations

import json
import math

from test_cli import launch

from hpc_dsgd.models import resnet20
from hpc_dsgd.models.transformer import Seq2SeqTransformer


def test_bench_json_under_mpiexec(tmp_path):
    out = tmp_path / "bench.json"
    p, _ = launch(["bench", "--replicas-per-rank", "2", "--rounds", "1", "--width", "0.25", "--batch-size", "4",
                "--classes", "1000", "--compare-loop", "--json", str(out)], ranks=4, timeout=240)
    assert p.returncode == 0, p.stderr
    j = json.loads(out.read_text())
    assert set(j["modes"]) == {"premade", "local", "gossip", "theta", "allreduce", "xi", "overlap", "loop_local"}
    for m, v in j["modes"].items():
        assert set(v) == {"ms_per_iteration", "ms_p25", "ms_p75", "images_per_s", "samples_per_s"}
        assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in v.values()), (m, v)
        assert v["ms_p25"] <= v["ms_per_iteration"] <= v["ms_p75"]
        # images/s counts every replica's batch: ranks x k x batch per iteration
        assert math.isclose(v["images_per_s"], 4 * 2 * 4 / (v["ms_per_iteration"] / 1e3), rel_tol=1e-9)
        assert v["samples_per_s"] == v["images_per_s"]
    assert j["ranks"] == 4 and j["replicas_per_rank"] == 2 and j["n"] == 8 and isinstance(j["replicas_per_rank"], int)
    assert j["exec"] == "grouped" and j["precision"] == "fp32" and j["deterministic"] is True
    assert j["device"] == "cpu" and j["cuda_aware_mpi"] is False and j["cuda_graph"] is False
    assert all(isinstance(x, float) for x in j["parts_ms"].values())
    assert j["workload"] == "image" and j["samples"] == "images" and j["model"] == "resnet20"
    assert j["classes"] == 1000 and j["d"] == sum(p.numel() for p in resnet20(num_classes=1000, width=0.25).parameters())
    assert "batched/loop local step" in p.stdout and "bench: workload image, resnet20 width 0.25, 1000 classes" in p.stdout


def test_translation_bench_json_under_mpiexec(tmp_path):
    """--workload translation: the Multi30k Transformer (Adam, label-smoothed loss) on synthetic sentences,
    the same modes (no CUDA graph), sentences/s = ranks x k x batch / (s per iteration)."""
    out = tmp_path / "bench.json"
    p, _ = launch(["bench", "--workload", "translation", "--replicas-per-rank", "2", "--rounds", "1",
                   "--batch-size", "4", "--d-model", "32", "--layers", "1", "--d-ff", "64", "--vocab", "300",
                   "--json", str(out)], ranks=2, timeout=120)
    assert p.returncode == 0, p.stderr
    j = json.loads(out.read_text())
    assert set(j["modes"]) == {"premade", "local", "gossip", "theta", "allreduce", "xi", "overlap"}
    for m, v in j["modes"].items():
        assert set(v) == {"ms_per_iteration", "ms_p25", "ms_p75", "sentences_per_s", "samples_per_s"}
        assert all(isinstance(x, float) and math.isfinite(x) and x > 0 for x in v.values()), (m, v)
        assert math.isclose(v["samples_per_s"], 2 * 2 * 4 / (v["ms_per_iteration"] / 1e3), rel_tol=1e-9)
        assert v["sentences_per_s"] == v["samples_per_s"]
    assert j["workload"] == "translation" and j["samples"] == "sentences" and j["model"] == "transformer"
    assert j["n"] == 4 and j["batch_size"] == 4 and j["exec"] == "vmap" and j["cuda_graph"] is False
    assert (j["d_model"], j["layers"], j["d_ff"], j["vocab_size"], j["optimizer"]) == (32, 1, 64, 300, "adam")
    model = Seq2SeqTransformer(300, 0, d_model=32, nhead=4, num_layers=1, dim_feedforward=64)  # the workload's model
    assert j["d"] == sum(q.numel() for q in model.parameters())
    assert "bench: workload translation, transformer d_model 32" in p.stdout and f"(d={j['d']})" in p.stdout
    assert "sentences/s" in p.stdout


def test_translation_batches_are_multi30k_like():
    """The synthetic stand-in is the Translation workload itself on random ids: mean lengths about 13 and 14
    subwords (+ <eos>), padded as the workload pads, no special id inside a sentence, default batch 64."""
    import torch

    from hpc_dsgd.bench import DEFAULT_BATCH, IdTokenizer, synthetic_translation
    from hpc_dsgd.config import Config
    from hpc_dsgd.workloads import Translation

    cfg = Config(n=2, dataset="multi30k", model="transformer", vocab_size=300, batch_size=8, optimizer="adam")
    wl = synthetic_translation(cfg, 4000, "cpu")
    assert isinstance(wl, Translation) and wl.num_train == 4000 and DEFAULT_BATCH["translation"] == 64
    assert abs((wl.src_len - 1).double().mean() - 13) < 0.5 and abs((wl.tgt_len - 1).double().mean() - 14) < 0.5
    pad, bos, eos = IdTokenizer.pad_id, IdTokenizer.bos_id, IdTokenizer.eos_id
    rows = torch.arange(4000)
    assert (wl.src_all[rows, wl.src_len - 1] == eos).all() and (wl.tgt_out_all[rows, wl.tgt_len - 1] == eos).all()
    shifted = wl.tgt_out_all[:, :-1]  # the decoder input is <bos> + the target without its <eos>
    assert (wl.tgt_in_all[:, 0] == bos).all() and (wl.tgt_in_all[:, 1:] == shifted.masked_fill(shifted == eos, pad)).all()
    body = wl.src_all[:, :-1][torch.arange(wl.src_all.shape[1] - 1) < (wl.src_len - 1)[:, None]]
    assert body.min() >= 3 and body.max() < 300


def test_bench_prints_the_spread_and_what_it_cannot_tell_apart(tmp_path):
    """Under mpiexec each mode's line carries the middle half of its rounds, the JSON the same quartiles
    (checked against statistics.quantiles of nothing else but their definition: p25 <= median <= p75), and
    modes whose spreads overlap are named as not distinguishable; every flag's help states its default."""
    out = tmp_path / "bench.json"
    p, _ = launch(["bench", "--rounds", "6", "--width", "0.25", "--batch-size", "2", "--json", str(out)], ranks=2,
                  timeout=240)
    assert p.returncode == 0, p.stderr
    j = json.loads(out.read_text())
    table = p.stdout.split("\nmode", 1)[1].split("\nspread:", 1)[0].splitlines()[1:]  # the per-mode lines
    lines = {ln.split()[0]: ln for ln in table}
    assert set(lines) == set(j["modes"]), table
    for m, v in j["modes"].items():
        assert v["ms_p25"] <= v["ms_per_iteration"] <= v["ms_p75"]
        assert f"{v['ms_p25']:.2f}-{v['ms_p75']:.2f} ms" in lines[m]
    q = {m: (v["ms_p25"], v["ms_p75"]) for m, v in j["modes"].items()}
    def overlap(a, b) -> bool:
        return q[a][0] <= q[b][1] and q[b][0] <= q[a][1]

    spread_line = next(ln for ln in p.stdout.splitlines() if ln.startswith("spread: the middle half of 6 rounds"))
    assert ("gossip ~ theta" in spread_line) == overlap("gossip", "theta"), spread_line
    h, _ = launch(["bench", "--help"], ranks=0, timeout=60)
    blocks = []  # one per option: its line and the indented lines of its help below it
    for ln in h.stdout.split("options:", 1)[1].splitlines():
        if ln.startswith("  -"):
            blocks.append(ln)
        elif blocks and ln.startswith("   "):
            blocks[-1] += " " + ln.strip()
    assert len(blocks) == 22, blocks
    for b in blocks[1:]:  # after -h, --help
        assert "default" in b, b
