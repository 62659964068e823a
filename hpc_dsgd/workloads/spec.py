"""What each data set's workload answers without training: its facts, registered once, importable without torch.

A WorkloadSpec per data set (the config's `dataset` value) says: the workload class that trains it (imported on
first use, so that config validation, `campaign status` and the tables never import torch), the task, the models
it accepts, its classes and training-set size (or how to count it from the files), the config keys only it reads,
the report figures that apply, whether the sharpness study applies, and:
  validate(cfg)        the problems of its keys, as messages (config.validate raises the first; no file opened);
  check_inputs(cfg)    its files are there (DataError naming the file otherwise), before any work;
  check_integrity(cfg) the thorough check before training (CIFAR-10: every file's MD5);
  count_train(cfg)     training samples (None where the config names no data directory);
  param_sizes(cfg, ckpt) (d, D) of the run's model, for the checkpoint's tensor-size check (compat.model_sizes).
config, preflight, compat (the checkpoint size check), sharpness, the surface figures and the campaign's report ask
the spec of a run's data set (`spec_of`) instead of testing data-set names.

Adding a workload: its module (the Workload class, workloads/__init__.py's protocol) plus one `register(...)` line
below; docs/adding_a_workload.md. This module imports nothing of hpc_dsgd at import time (config imports it).
"""
from __future__ import annotations

import importlib
import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSizes:
    """Numbers per replica a training checkpoint holds: D in X (parameters, then float buffers), d in each
    optimizer state; exact=False: at most these (a bound); `what` names the model in a message."""

    d: int
    D: int
    exact: bool
    what: str


@dataclass(frozen=True)
class WorkloadSpec:
    dataset: str  # the config's `dataset` value
    workload: str | type  # the Workload class, or "module:Class" (imported by workload_class(), on first use)
    task: str  # what is learnt: "classification", "translation", ...
    models: tuple[str, ...]  # the config's `model` values it trains
    classes: int = 0  # output classes (classification; 0: not a classification task)
    train_size: int = 0  # training samples when fixed; 0: counted from the files (count_train)
    samples: str = "samples"  # what one training sample is called in messages ("images", "sentence pairs")
    keys: tuple[str, ...] = ()  # config keys only this workload reads: inapplicable to every other workload
    figures: tuple[str, ...] = ()  # campaign report figures that apply (analysis.figures function names)
    supports_sharpness: bool = False  # the sharpness study (lambda_max of the training loss) applies
    counter: str = ""  # "module:function(data_dir) -> int": training samples from the files, when not fixed

    def workload_class(self) -> type:
        if isinstance(self.workload, str):
            mod, name = self.workload.split(":")
            return getattr(importlib.import_module(mod), name)
        return self.workload

    def validate(self, cfg) -> list[str]:
        """Problems of cfg's values under this workload, one message each (empty: fine). Opens no file."""
        out = []
        if cfg.model not in self.models:
            others = [s.dataset for s in SPECS.values() if cfg.model in s.models]
            out.append(f"model={cfg.model!r}: choose one of {', '.join(self.models)} for dataset {cfg.dataset!r}"
                       + (f" ({cfg.model} is the {others[0]} model)" if len(others) == 1 else
                          f" ({cfg.model} is a model of {', '.join(others)})" if others else ""))
        if cfg.sharpness_every and not self.supports_sharpness:
            out.append(f"sharpness_every={cfg.sharpness_every}: the sharpness study is for "
                       f"{', '.join(sharpness_datasets())} (image classification); "
                       f"set sharpness_every = 0 for {cfg.dataset}")
        return out

    def check_inputs(self, cfg) -> None:
        """Its files are there (the Workload class's check_inputs(cfg), where it has one)."""
        check = getattr(self.workload_class(), "check_inputs", None)
        if check is not None:
            check(cfg)

    def check_integrity(self, cfg) -> None:
        """Thorough checks of its files before training (default: none beyond check_inputs)."""

    def count_train(self, cfg) -> int | None:
        if self.train_size:
            return self.train_size
        if not self.counter or not cfg.data_dir:
            return None
        mod, name = self.counter.split(":")
        return int(getattr(importlib.import_module(mod), name)(cfg.data_dir))

    def param_sizes(self, cfg: dict, ckpt_path: str) -> ModelSizes | None:
        """(d, D) of the run's model (cfg: a full config dict), built on the meta device: the Workload class's
        model_for(cfg, spec) where it has one; None (sizes unchecked) where it has none or cannot build it."""
        build = getattr(self.workload_class(), "model_for", None)
        if build is None:
            return None
        return _meta_sizes(lambda: build(cfg, self), f"{cfg.get('model')} of {self.dataset}")


def _meta_sizes(build, what: str, exact: bool = True) -> ModelSizes | None:
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # noqa: BLE001 - a config this version cannot build: the sizes stay unchecked
        return None
    d = sum(p.numel() for p in model.parameters())
    return ModelSizes(d, d + sum(b.numel() for b in model.buffers() if b.is_floating_point()), exact, what)


@dataclass(frozen=True)
class ImageSpec(WorkloadSpec):
    """Image classification (workloads/image.py): ResNet-20 at a width factor, or small_cnn."""

    workload: str | type = "hpc_dsgd.workloads.image:ImageClassification"
    task: str = "classification"
    models: tuple[str, ...] = ("resnet20", "small_cnn")
    samples: str = "images"
    keys: tuple[str, ...] = ("width",)
    figures: tuple[str, ...] = ("fig1_consensus", "fig2_learning_curves")
    supports_sharpness: bool = True
    md5: bool = False  # check_integrity: every official file's MD5 (CIFAR-10's torchvision list)

    def validate(self, cfg) -> list[str]:
        out = super().validate(cfg)
        if cfg.width <= 0:
            out.append(f"width={cfg.width}: need a positive width factor")
        return out

    def check_inputs(self, cfg) -> None:
        from ..data import check_dataset

        check_dataset(self.dataset, cfg.data_dir or None)

    def check_integrity(self, cfg) -> None:
        if self.md5 and cfg.data_dir:
            from ..data.cifar10 import check_md5

            check_md5(cfg.data_dir)

    def param_sizes(self, cfg: dict, ckpt_path: str) -> ModelSizes | None:
        def build():
            from ..models import build_model

            return build_model(cfg["model"], self.classes, float(cfg["width"]))
        return _meta_sizes(build, f"{cfg.get('model')} width {cfg.get('width')}, {self.dataset}")


TRANSFORMER_KEYS = ("vocab_size", "max_len", "d_model", "heads", "layers", "d_ff", "dropout", "label_smoothing")


@dataclass(frozen=True)
class TranslationSpec(WorkloadSpec):
    """Neural machine translation (workloads/translation.py): the Transformer, its own keys."""

    workload: str | type = "hpc_dsgd.workloads.translation:Translation"
    task: str = "translation"
    models: tuple[str, ...] = ("transformer",)
    samples: str = "sentence pairs"
    keys: tuple[str, ...] = TRANSFORMER_KEYS
    figures: tuple[str, ...] = ("fig3_learning_curves",)

    def validate(self, cfg) -> list[str]:
        out = super().validate(cfg)
        for ok, msg in (
                (cfg.vocab_size >= 259, f"vocab_size={cfg.vocab_size}: byte-level BPE needs at least 259 (256 bytes + 3 specials)"),
                (cfg.max_len >= 1, f"max_len={cfg.max_len}: need >= 1 subword per sentence"),
                (cfg.d_model >= 2 and cfg.d_model % 2 == 0 and cfg.heads >= 1 and cfg.d_model % cfg.heads == 0,
                 f"d_model={cfg.d_model}, heads={cfg.heads}: need an even d_model that is a multiple of heads (e.g. 256 and 4)"),
                (cfg.layers >= 1 and cfg.d_ff >= 1, f"layers={cfg.layers}, d_ff={cfg.d_ff}: need >= 1 each"),
                (0 <= cfg.dropout < 1, f"dropout={cfg.dropout}: need 0 <= dropout < 1"),
                (0 <= cfg.label_smoothing < 1, f"label_smoothing={cfg.label_smoothing}: need 0 <= label_smoothing < 1")):
            if not ok:
                out.append(msg)
        return out

    def check_inputs(self, cfg) -> None:
        from ..data import check_dataset

        check_dataset(self.dataset, cfg.data_dir or None)

    def param_sizes(self, cfg: dict, ckpt_path: str) -> ModelSizes | None:
        """The model of the run's tokenizer's vocabulary (exactly), or, without a readable tokenizer.json beside
        the run, of vocab_size (at most)."""
        tpath, vocab = _run_vocab(ckpt_path)

        def build():
            from ..models.transformer import Seq2SeqTransformer

            return Seq2SeqTransformer(int(vocab or cfg["vocab_size"]), 0, d_model=int(cfg["d_model"]),
                                      nhead=int(cfg["heads"]), num_layers=int(cfg["layers"]),
                                      dim_feedforward=int(cfg["d_ff"]))
        what = (f"transformer d_model {cfg.get('d_model')}, {cfg.get('layers')} layers, "
                + (f"the {vocab} subwords of {tpath}" if vocab else f"at most vocab_size={cfg.get('vocab_size')} subwords"))
        return _meta_sizes(build, what, exact=vocab is not None)


TOKENIZER_MAX_BYTES = 64 << 20  # as the checkpoint manifest's bound (a BPE of 8000 subwords is about 0.5 MB)


def _run_vocab(ckpt_path: str) -> tuple[str, int | None]:
    """(path, vocabulary size) of the tokenizer of the run holding checkpoint `ckpt_path` (RUN/tokenizer.json),
    None where it is absent or unreadable (the translation workload reports that itself)."""
    tpath = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt_path))), "tokenizer.json")
    try:
        fd = os.open(tpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > TOKENIZER_MAX_BYTES:
                return tpath, None
            from tokenizers import Tokenizer

            return tpath, Tokenizer.from_str(f.read().decode("utf-8")).get_vocab_size()
    except Exception:  # noqa: BLE001 - absent or damaged: not this check's to report
        return tpath, None


SPECS: dict[str, WorkloadSpec] = {}


def register(spec: WorkloadSpec) -> WorkloadSpec:
    """Make `spec` the workload of its data set (one line per data set below; a test may register its own)."""
    SPECS[spec.dataset] = spec
    return spec


def unregister(dataset: str) -> None:
    SPECS.pop(dataset, None)


def spec_of(dataset: str) -> WorkloadSpec | None:
    """The spec of `dataset`, None if no workload trains on it (config.validate names the choices) or it is not a
    name at all (a damaged trace's config)."""
    return SPECS.get(dataset) if isinstance(dataset, str) else None


def report_figures(dataset) -> tuple[str, ...]:
    """The campaign report's figures (analysis.figures function names) that apply to a run of `dataset`."""
    spec = spec_of(dataset)
    return spec.figures if spec is not None else ()


def sharpness_datasets() -> list[str]:
    """The data sets whose workload the sharpness study (and the loss surfaces) applies to."""
    return [s.dataset for s in SPECS.values() if s.supports_sharpness]


def workload_keys() -> frozenset:
    """The config keys some workload owns (each inapplicable under every other workload)."""
    return frozenset(k for s in SPECS.values() for k in s.keys)


register(ImageSpec("digits", classes=10, train_size=1437))  # scikit-learn's 8x8 digits, embedded
register(ImageSpec("cifar10", classes=10, train_size=50_000, md5=True))
register(ImageSpec("imagenet32", classes=1000, counter="hpc_dsgd.data.imagenet32:train_count"))
register(TranslationSpec("multi30k", counter="hpc_dsgd.data.multi30k:train_count"))
