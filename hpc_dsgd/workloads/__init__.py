"""Workloads: what a run trains, as the D-SGD loop sees it.

The loop (train.py), the replica block and its executors (replica.py, execution.py), gossip and consensus
control (comm.py, consensus.py), traces, checkpoints and the tools are ONE code path for every workload. A
workload supplies only what differs between tasks (the Workload protocol below):

  build_model()          the model of one replica (called under torch.manual_seed(cfg.seed): every replica
                         starts from the same initial model);
  optimizer(k, d, dev)   the local optimizer on the (k, d) block (optim.py: SGD with Nesterov momentum, or Adam);
  schedule()             the learning rate per iteration and the phases (schedule.py);
  partition              data.DataPartition: which training samples each replica reads (iid shards of every
                         epoch's permutation, or a non-iid part of its own: docs/partitions.md);
  batch(reps, idx)       the k mini-batches of the current iteration from idx (k, B), replica j's training
                         indices (chosen by the loop from the partition);
                         returns (inputs, target) on the device; random numbers are counter-based in
                         (seed, global replica id, iteration), so they never depend on the rank split;
  loss(out, target)      (sum over the k replicas of each replica's mean loss, correct predictions, predictions)
                         from the executor's outputs (k, B, ...);
  evaluate(world, reps)  a collective evaluation of the averaged model and the local models -> trace columns;
  trace_attrs(), trace_arrays()  the trace's attributes and its datasets besides the rows (label histograms);
  describe(metrics)      the evaluation's part of the progress line.

Workloads: ImageClassification (digits, cifar10, imagenet32; ResNet-20 at any width, small_cnn) and
Translation (multi30k; the Transformer). What a data set's workload answers without training (its keys, inputs,
sizes, models, figures) is its WorkloadSpec in spec.py, registered once per data set; this package imports no
torch until a workload class is named. How to add one: docs/adding_a_workload.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .spec import SPECS, WorkloadSpec, register, spec_of

if TYPE_CHECKING:  # this package imports no torch: config validation and the tables read spec.py through it
    import torch

    from ..data import DataPartition
    from ..optim import LocalAdam, LocalSGD
    from ..schedule import Schedule


class Workload(Protocol):
    """What the loop, the replica block and its executors, the benchmark and the tests call on a workload (the
    list above). `reps` is the replica block (replica.Replicas: batch() reads its static device inputs, evaluate()
    its rows and executor); `world` is comm.World. ImageClassification and Translation implement it; so does any
    class with these members (structural typing: no base class to inherit)."""

    name: ClassVar[str]  # trace attribute "workload"
    samples: ClassVar[str]  # what one training sample is called ("images", "sentences"): throughput column
    capturable: ClassVar[bool]  # fixed shapes: the local step can be captured as one CUDA graph
    num_train: int  # training samples (the epoch permutation's length; without a held-out validation part)
    partition: DataPartition  # which training samples each replica reads

    @classmethod
    def load(cls, cfg, world, run_dir: str, how: str = "fresh") -> Workload: ...

    def build_model(self) -> torch.nn.Module: ...

    def optimizer(self, k: int, d: int, device) -> LocalSGD | LocalAdam: ...

    def schedule(self) -> Schedule: ...

    def trace_attrs(self) -> dict[str, Any]: ...

    def trace_arrays(self) -> dict[str, Any]: ...

    def batch(self, reps, idx: torch.Tensor) -> tuple[Any, torch.Tensor]: ...

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def evaluate(self, world, reps) -> dict[str, float]: ...

    def describe(self, metrics: dict | None) -> str: ...


def workload_of(dataset: str) -> type[Workload]:
    """The workload class that trains on `dataset` (its spec's, imported now)."""
    spec = spec_of(dataset)
    if spec is None:
        raise ValueError(f"no workload trains on dataset {dataset!r}; choose one of {', '.join(SPECS)}")
    return spec.workload_class()


def make_workload(cfg, world, run_dir: str, how: str = "fresh") -> Workload:
    """Load the run's data (collective: every rank of world.comm calls it) and build its workload.
    how: 'fresh', 'resume' or 'branch' (a translation run keeps its tokenizer across resumes)."""
    return workload_of(cfg.dataset).load(cfg, world, run_dir, how)


def __getattr__(name: str):  # the workload classes, imported (with torch) when first named
    if name == "ImageClassification":
        from .image import ImageClassification

        return ImageClassification
    if name == "Translation":
        from .translation import Translation

        return Translation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SPECS", "ImageClassification", "Translation", "Workload", "WorkloadSpec", "make_workload", "register",
           "spec_of", "workload_of"]
