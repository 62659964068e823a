"""Image classification (paper Sec. 4.2): CIFAR-10 / ImageNet-32 / the digits stand-in, ResNet-20 at a
width factor, SGD with Nesterov momentum, step decays (phases). Mini-batches come from the device-resident
uint8 images, cropped and flipped with counter-based random numbers (data/augment.py) and normalised."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..comm import allreduce_scalars, global_mean
from ..data import DataError, ImageData, load_dataset, make_partition
from ..data.augment import augment_replicas, channel_stats, normalise
from ..models import build_model
from ..optim import make_optimizer
from ..schedule import Schedule


class ImageClassification:
    name = "image"
    samples = "images"  # throughput column: images_per_s
    capturable = True  # fixed shapes: the local step can be one CUDA graph

    def __init__(self, cfg, data: ImageData, device):
        # the partition (data/partition.py): which training images each replica reads; with validation_split,
        # the held-out images replace the test set of every evaluation (eval_set), and training reads the rest
        self.partition, held = make_partition(cfg, data.train_y.cpu().numpy(), data.num_classes)
        self.eval_set = "test" if held is None else "validation"
        if held is not None:
            h = torch.from_numpy(held).to(data.train_y.device)
            data = replace(data, test_x=data.train_x[h], test_y=data.train_y[h])
        self.cfg, self.data, self.device = cfg, data, torch.device(device)
        self.num_train = self.partition.num_train  # the training subset (the epoch permutation's length)
        self.mean, self.std = channel_stats(data.mean, data.std, self.device)
        g = torch.Generator().manual_seed(cfg.seed + 17)
        self.local_idx = torch.randperm(len(data.test_y), generator=g)[:cfg.local_eval_samples or None]

    @classmethod
    def load(cls, cfg, world, run_dir: str, how: str = "fresh") -> "ImageClassification":
        data, err = None, None
        try:
            data = load_dataset(cfg.dataset, cfg.data_dir or None)
        except DataError as e:  # a damaged cache found by one rank stops every rank alike, not a hang
            err = str(e)
        errors = world.comm.allgather(err)
        if any(errors):
            raise DataError(next(e for e in errors if e))
        return cls(cfg, data.to(world.device), world.device)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg.model, self.data.num_classes, self.cfg.width)

    def optimizer(self, k: int, d: int, device):
        return make_optimizer(self.cfg, k, d, device)

    def schedule(self) -> Schedule:
        return Schedule.from_config(self.cfg, self.num_train)

    def trace_attrs(self) -> dict:
        p = self.partition
        return {"workload": self.name, "num_classes": self.data.num_classes, "partition": p.kind,
                "partition_draws": p.draws, "train_samples": self.num_train, "eval_set": self.eval_set,
                "eval_samples": len(self.data.test_y)}

    def trace_arrays(self) -> dict:
        """Datasets of the trace besides its rows: every replica's label histogram (n, classes) and part size."""
        return {"partition/label_histogram": self.partition.histogram(), "partition/sizes": self.partition.sizes()}

    # -- training ----------------------------------------------------------------------------
    def batch(self, reps, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, B, 3, H, W) augmented, normalised images and (k, B) labels; graph-capturable."""
        x = augment_replicas(self.data.train_x[idx], self.cfg.seed, reps.ids, reps.t_dev, self.mean, self.std)
        return x, self.data.train_y[idx]

    def loss(self, logits: torch.Tensor, y: torch.Tensor):
        k, B = y.shape
        logits = logits.float()
        loss = F.cross_entropy(logits.reshape(k * B, -1), y.reshape(-1), reduction="sum") / B  # sum of k means
        correct = (logits.argmax(-1) == y).sum()
        return loss, correct, torch.full((), k * B, dtype=torch.int64, device=y.device)

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def local_correct(self, reps, idx: torch.Tensor, bs: int = 250) -> torch.Tensor:
        """Correct predictions (k,) of every local replica on the test images idx (BN in eval mode)."""
        data = self.data
        correct = torch.zeros(reps.k, dtype=torch.int64, device=self.device)
        for s in range(0, len(idx), bs):
            sel = idx[s:s + bs].to(data.test_x.device)
            x = normalise(data.test_x[sel], self.mean, self.std)
            with reps.autocast():
                out = reps.exec.forward(reps.P, reps.Bf, x, train=False, shared=True)  # (k, B, classes)
            correct += (out.argmax(-1) == data.test_y[sel]).sum(dim=1)
        return correct

    @torch.no_grad()
    def accuracy(self, reps, model: torch.nn.Module, idx: torch.Tensor, bs: int = 500) -> tuple[float, float]:
        """(correct count, summed loss) of `model` (e.g. the averaged model) on test images idx."""
        data = self.data
        model.eval()
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for s in range(0, len(idx), bs):
            sel = idx[s:s + bs].to(data.test_x.device)
            with reps.autocast():
                out = model(normalise(data.test_x[sel], self.mean, self.std)).float()
            y = data.test_y[sel]
            correct += (out.argmax(1) == y).sum()
            loss += F.cross_entropy(out, y, reduction="sum")
        return float(correct), float(loss)

    def evaluate(self, world, reps) -> dict:
        """Test accuracy (%) of the averaged model (test set split over ranks) and of every local model. With
        validation_split the "test" set is the held-out part of the training set (trace attribute eval_set)."""
        reps.eval_x.copy_(global_mean(world, reps.X).to(reps.eval_x.dtype))  # xbar, BN buffers included
        mine = torch.arange(world.rank, len(self.data.test_y), world.ranks)
        c_avg, l_avg = self.accuracy(reps, reps.eval_model, mine)
        accs = (100.0 / len(self.local_idx)) * self.local_correct(reps, self.local_idx).double()  # (k,) at once
        s = allreduce_scalars(world.comm, [c_avg, l_avg, float(accs.sum()), float(accs.pow(2).sum())])
        n, N = world.n, len(self.data.test_y)
        mean = s[2] / n
        return {"test_acc_avg": 100.0 * s[0] / N, "test_loss_avg": s[1] / N, "test_acc_local_mean": mean,
                "test_acc_local_std": math.sqrt(max(s[3] / n - mean * mean, 0.0))}

    def describe(self, m: dict | None) -> str:
        what = "test" if self.eval_set == "test" else " val"
        if m is None:
            return f"{what}(avg)     -  {what}(local)     - "
        return f"{what}(avg) {m['test_acc_avg']:5.1f}% {what}(local) {m['test_acc_local_mean']:5.1f}%"
