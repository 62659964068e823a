"""Adding a workload is one module plus one registry line (docs/adding_a_workload.md): a two-class Gaussian data set
and a small MLP, written here as that module would be, registered with one `register(...)`, trains through the
normal `train.run` path (one process, COMM_SELF); config validation, the data-size check, the checkpoint's
tensor-size check and the tables' inapplicable keys then answer for it through its spec, with no other edit.
Also: the built-in specs answer what config, preflight, checkpoint, sharpness and the campaign report used to
decide by testing data-set names."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI

from hpc_dsgd.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint
from hpc_dsgd.comm import allreduce_scalars, global_mean
from hpc_dsgd.compat import model_sizes
from hpc_dsgd.config import ConfigError, from_dict, inapplicable_keys
from hpc_dsgd.optim import make_optimizer
from hpc_dsgd.preflight import check_data_size, train_size
from hpc_dsgd.schedule import Schedule
from hpc_dsgd.trace import read_trace
from hpc_dsgd.workloads import spec_of
from hpc_dsgd.workloads.spec import SPECS, WorkloadSpec, register, report_figures, unregister

from ckpt_tamper import edit_manifest

NTRAIN, NTEST = 256, 128


# -- the module a new workload would be (hpc_dsgd/workloads/gaussian.py) ------------------------------------
def _points(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of two classes, N((+-1.5, +-1.5), I): nearly separable by the diagonal."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.randn(n, 2, generator=g) + 1.5 * (2 * y - 1).float()[:, None], y


class Gaussian2:
    name = "gaussian2"
    samples = "points"
    capturable = False

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, torch.device(device)
        self.train_x, self.train_y = (t.to(self.device) for t in _points(11, NTRAIN))
        self.test_x, self.test_y = (t.to(self.device) for t in _points(12, NTEST))
        self.num_train = NTRAIN

    @classmethod
    def load(cls, cfg, world, run_dir: str, how: str = "fresh") -> Gaussian2:
        return cls(cfg, world.device)

    @staticmethod
    def model_for(cfg, spec) -> torch.nn.Module:  # also the checkpoint size check's model (on the meta device)
        return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, spec.classes))

    def build_model(self):
        return self.model_for(self.cfg.to_dict(), SPECS["gaussian2"])

    def optimizer(self, k, d, device):
        return make_optimizer(self.cfg, k, d, device)

    def schedule(self):
        return Schedule.from_config(self.cfg, self.num_train)

    def trace_attrs(self):
        return {"workload": self.name, "num_classes": 2}

    def batch(self, reps, idx):
        return self.train_x[idx], self.train_y[idx]  # (k, B, 2), (k, B)

    def loss(self, logits, y):
        k, B = y.shape
        loss = F.cross_entropy(logits.reshape(k * B, -1).float(), y.reshape(-1), reduction="sum") / B
        return loss, (logits.argmax(-1) == y).sum(), torch.full((), k * B, dtype=torch.int64)

    @torch.no_grad()
    def evaluate(self, world, reps):
        reps.eval_x.copy_(global_mean(world, reps.X).to(reps.eval_x.dtype))
        reps.eval_model.eval()
        (correct,) = allreduce_scalars(world.comm, [float((reps.eval_model(self.test_x).argmax(1) == self.test_y).sum())])
        return {"test_acc_avg": 100.0 * correct / NTEST}

    @staticmethod
    def describe(m):
        return "test(avg)     -" if m is None else f"test(avg) {m['test_acc_avg']:5.1f}%"


SPEC = WorkloadSpec("gaussian2", workload=Gaussian2, task="classification", models=("mlp",), classes=2,
                    train_size=NTRAIN, samples="points")
# -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def gaussian2():
    register(SPEC)  # the one registry line (workloads/spec.py holds the built-in ones)
    yield SPEC
    unregister("gaussian2")


def test_a_registered_workload_trains_through_train_run(gaussian2, tmp_path):
    from hpc_dsgd.train import run

    cfg = from_dict({"dataset": "gaussian2", "model": "mlp", "n": 4, "batch_size": 8, "epochs": 3.0,
                     "warmup_epochs": 0.5, "warmup_lr": 0.05, "base_lr": 0.05, "base_batch": 32, "width": 0.0,
                     "checkpoint_minutes": 0.0, "out_dir": str(tmp_path), "name": "g2", "device": "cpu"},
                    )  # width=0 is not this workload's key: not validated, not an identity
    assert train_size(cfg) == NTRAIN and "width" in inapplicable_keys(cfg.to_dict())
    res = run(cfg, MPI.COMM_SELF, log=lambda *a, **k: None)
    tr = read_trace(os.path.join(tmp_path, "g2", "trace.h5"))
    assert tr.attrs["workload"] == "gaussian2" and tr.attrs["status"] == "finished"
    its = tr.iter["loss"]
    assert len(its) == 3 * NTRAIN // (4 * 8)  # 8 iterations per epoch, 3 epochs
    assert all(math.isfinite(x) for x in its) and sum(its[-4:]) < sum(its[:4])
    assert res.metrics["test_acc_avg"] >= 85.0  # the classes overlap by about 7%
    # the checkpoint's tensor sizes are checked against the workload's model: (2*8+8) + (8*2+2) = 42 numbers
    ck = list_checkpoints(os.path.join(tmp_path, "g2"))[0]
    assert model_sizes(cfg.to_dict(), ck).D == 42
    verify_checkpoint(ck, sizes=model_sizes)
    def wider(m):  # a manifest that agrees with itself, one number more per replica than the model has
        m["tensors"]["X"]["shape"] = [43]
        for entry in m["files"].values():
            entry["keys"]["t.X"]["shape"][1] = 43
    edit_manifest(ck, wider)
    with pytest.raises(CheckpointError, match=r"tensors.X has 43 numbers per replica; the run's model \(mlp of "
                                              r"gaussian2\) has 42"):
        verify_checkpoint(ck, sizes=model_sizes)


def test_a_registered_workload_validates_and_sizes_its_runs(gaussian2):
    with pytest.raises(ConfigError, match="model='resnet20': choose one of mlp for dataset 'gaussian2'"):
        from_dict({"dataset": "gaussian2"})
    with pytest.raises(ConfigError, match="sharpness_every=1: the sharpness study is for digits, cifar10, imagenet32"):
        from_dict({"dataset": "gaussian2", "model": "mlp", "sharpness_every": 1})
    with pytest.raises(ConfigError, match="exceeds the 256 training points of gaussian2"):
        check_data_size(from_dict({"dataset": "gaussian2", "model": "mlp", "n": 8, "batch_size": 64}))
    assert report_figures("gaussian2") == ()


def test_the_built_in_specs_answer_what_names_used_to_decide(tmp_path):
    assert list(SPECS) == ["digits", "cifar10", "imagenet32", "multi30k"]
    assert [spec_of(d).classes for d in ("digits", "cifar10", "imagenet32")] == [10, 10, 1000]
    assert train_size(from_dict({})) == 1437
    assert train_size(from_dict({"dataset": "cifar10"})) == 50_000
    assert train_size(from_dict({"dataset": "imagenet32"})) is None  # no data_dir: not counted
    assert [d for d in SPECS if spec_of(d).supports_sharpness] == ["digits", "cifar10", "imagenet32"]
    assert report_figures("cifar10") == ("fig1_consensus", "fig2_learning_curves")
    assert report_figures("multi30k") == ("fig3_learning_curves",) and report_figures(["x"]) == ()
    assert spec_of("multi30k").workload_class().__name__ == "Translation"
    # the checkpoint size check's models: ResNet-20 at width 0.25 on digits (the fault suite's figure)
    assert model_sizes({"dataset": "digits", "width": 0.25}, str(tmp_path / "ck")).D == 17926
    m = model_sizes({"dataset": "multi30k", "model": "transformer", "vocab_size": 300, "d_model": 32, "heads": 2,
                     "layers": 1, "d_ff": 64}, str(tmp_path / "run" / "checkpoints" / "ck"))
    assert not m.exact and "at most vocab_size=300" in m.what  # no tokenizer.json beside the run: a bound
    from hpc_dsgd.data.multi30k import SubwordTokenizer

    tok = SubwordTokenizer.train(["a dog runs", "ein Hund rennt"], vocab_size=300, min_frequency=1)
    (tmp_path / "run").mkdir()
    tok.save(str(tmp_path / "run" / "tokenizer.json"))
    exact = model_sizes({"dataset": "multi30k", "model": "transformer", "vocab_size": 300, "d_model": 32, "heads": 2,
                         "layers": 1, "d_ff": 64}, str(tmp_path / "run" / "checkpoints" / "ck"))
    assert exact.exact and exact.D < m.D and f"the {tok.vocab_size} subwords of" in exact.what
    assert model_sizes({"dataset": ["not", "a", "name"]}, "x") is None and model_sizes({"dataset": "mnist"}, "x") is None
