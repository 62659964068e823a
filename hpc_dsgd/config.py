"""Run description: one typed dataclass, TOML files, `--set key=value` overrides, validation.

Validation happens on every rank, from the file alone plus the rank count, before the first
collective: a bad value stops every rank with the same one-line message, and nothing hangs.
Errors are ValueError (ConfigError) naming the key, the value and what would be right.

load_config and from_dict parse and validate values only: they read the config file (and its `base` chain)
and open nothing else. What the config names outside itself (reference traces, the data directory, a
branch's checkpoint) is preflight.check_inputs', which the commands that need it call themselves. The data set's
own rules (its models, keys, whether sharpness applies) are its workload's (workloads/spec.py, imported here:
no torch).

Every key declares its role (field metadata, Role below); the rules that compare configs (resume, branch, a target's
reference, the campaign's same run, the tables' identity, inapplicable keys) are derived from the roles.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field

from .topology import TIME_VARYING
from .workloads.spec import SPECS, spec_of, workload_keys

POLICIES = ("allreduce", "gossip", "target", "adaptive", "csgd")
SHARPNESS_METHODS = ("lanczos", "power")
CONTROL_SIGNALS = ("xi", "theta")
PRECISIONS = ("fp32", "tf32", "bf16")
LR_SCHEDULES = ("step", "inverse_sqrt")
OPTIMIZERS = ("sgd", "adam")  # optim.make_optimizer
REPLICA_EXECS = ("batched", "loop")  # execution.EXECS
COMPRESSIONS = ("none", "topk", "randomk", "sign", "qsgd")
HIERARCHIES = ("none", "node")


RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,+=@-]{0,199}")  # one path component: no '/', '..', NUL, leading '-' or '.'
CONFIG_MAX_BYTES = 1 << 20  # a config file is a few kB: a larger one is refused before it is read
BASE_DEPTH_MAX = 16  # `base` files inherited in a chain (configs/ uses at most 3)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what would be right."""


# -- key roles: every key declares one (Config below, field metadata "role"); each rule that compares two configs
# (resume, branch, a target's reference, the campaign's "same run", the tables' experiment identity) is derived
# from them (keys_with_role), so a new key is placed in all of them by one word. tests/serial/test_key_roles.py.
@dataclass(frozen=True)
class Role:
    doc: str
    identity: bool  # names the experiment in the tables (analysis.runs.identity); the seed and paths do not
    resume: bool  # may differ when a run resumes from its own checkpoint (everything else must match it)
    branch: bool = False  # a branch must share it with the phase checkpoint it starts from
    reference: bool = False  # a target's reference trace must share it with the controlled run
    run: bool = False  # not the experiment, but which run of it (seed, inputs): the campaign's same-run check compares it
    bookkeeping: bool = False  # an identity key of the tables that the campaign's same-run check ignores


PATHS = Role("where the run's files go or its data come from", identity=False, resume=True)
RESOURCES = Role("how fast and on what it runs: never the result", identity=False, resume=True)
SAVING = Role("how often checkpoints are written: never the result. The tables still list these keys in the "
              "experiment's identity (tests/golden/tables freeze those columns); the campaign does not compare them",
              identity=True, resume=True, bookkeeping=True)
MEASUREMENT = Role("extra measurements (sharpness) that leave the trajectory and every other result alone",
                   identity=False, resume=True)
STOP = Role("where the run stops (the trajectory is the same up to there)", identity=True, resume=True)
OBSERVATION = Role("what is measured along the run and reported (evaluation, Xi cadence)", identity=True, resume=False)
SEED = Role("the replicate: one run of an experiment", identity=False, resume=False, branch=True, reference=True, run=True)
PROBLEM = Role("replicas, data and model", identity=True, resume=False, branch=True, reference=True)
OPTIMIZATION = Role("the local optimizer and its learning-rate schedule", identity=True, resume=False, branch=True,
                    reference=True)
GRAPH = Role("the communication graph", identity=True, resume=False, reference=True)
CONSENSUS = Role("the consensus policies and their control", identity=True, resume=False)
EXECUTION = Role("how a rank computes its replicas (same function; rounding may differ)", identity=True, resume=False)
INPUT = Role("another run's trace read throughout (a target's reference)", identity=False, resume=False, run=True)
PROVENANCE = Role("where a value came from (a note beside it, e.g. an untuned learning rate): never the result",
                  identity=False, resume=True)
START = Role("another run's checkpoint the run starts from (read once, at the start)", identity=False, resume=True,
             run=True)


def key(default=dataclasses.MISSING, role: Role | None = None, when: dict | None = None, factory=dataclasses.MISSING):
    """A Config field with its role; `when` {key: values}: the field is read only when those keys have those values
    (else inapplicable_keys lists it)."""
    if not isinstance(role, Role):
        raise TypeError(f"a config key declares its Role (config.py), got {role!r}")
    meta = {"role": role} | ({"when": when} if when else {})
    return field(default=default, default_factory=factory, metadata=meta)


@dataclass
class Config:
    # -- run ------------------------------------------------------------------------------
    name: str = key("run", PATHS)  # run name; outputs go to out_dir/name/
    out_dir: str = key("runs", PATHS)  # parent directory of run directories
    seed: int = key(0, SEED)  # one seed for init, data order, augmentation, matchings
    # -- world ----------------------------------------------------------------------------
    n: int = key(16, PROBLEM)  # replicas in total; replicas_per_rank = n / MPI ranks
    device: str = key("auto", RESOURCES)  # auto | cpu | cuda (one GPU per rank, node-local rank modulo GPUs)
    torch_threads: int = key(1, RESOURCES)  # intra-op CPU threads per rank
    # -- execution: how a rank computes its k replicas (same function, any choice) --------
    replica_exec: str = key("batched", EXECUTION)  # batched: all k replicas as one network (grouped ResNet; vmap for other models) | loop: one after another (the reference)
    precision: str = key("fp32", EXECUTION)  # fp32 (the paper; strict, no TF32) | tf32: fp32 with TF32 tensor-core convolutions and matmuls on CUDA | bf16: autocast of convolutions and matrix products; BN, loss and optimizer stay fp32
    deterministic: bool = key(True, EXECUTION)  # CUDA: deterministic kernels, so a run and its resume are bitwise reproducible; false allows faster kernels
    cuda_graph: bool = key(True, EXECUTION)  # CUDA: capture the local step (data, forward, backward, SGD) once as a CUDA graph and replay it
    # -- topology -------------------------------------------------------------------------
    topology: str = key("ring", GRAPH)  # ring | torus | complete | exponential | one_peer_exponential | random_matching
    #                                     | directed_exponential | directed_random (push-sum's: topology.py)
    torus_shape: list[int] = key(factory=list, role=GRAPH)  # [a, b] with a*b = n; empty = most square
    lazy_mixing: bool = key(False, GRAPH)  # true: gossip with (I + W)/2 instead of W (lambda_min >= 0; D2 on the ring needs it)
    # -- algorithm (hpc_dsgd/algorithms/, docs/algorithms.md) -------------------------------
    algorithm: str = key("dsgd", OPTIMIZATION)  # dsgd (the paper) | gradient_tracking | d2 | push_sum
    gossip_every: int = key(1, GRAPH)  # H: communicate (the phase's policy) every H-th iteration; the H-1 others are local steps (W = I)
    momentum_kind: str = key("local", OPTIMIZATION, when={"optimizer": ("sgd",)})  # local (the paper: momentum stays on the replica) | quasi_global (Lin et al. 2021; sgd only)
    # -- communication mode (modes.py, docs/communication.md) ------------------------------
    compression: str = key("none", CONSENSUS)  # none | topk | randomk | sign | qsgd: CHOCO-SGD compressed gossip with this operator
    compression_ratio: float = key(0.01, CONSENSUS, when={"compression": ("topk", "randomk")})  # topk, randomk: fraction of the row's coordinates sent
    qsgd_levels: int = key(16, CONSENSUS, when={"compression": ("qsgd",)})  # qsgd: quantization levels s
    consensus_lr: float = key(1.0, CONSENSUS, when={"compression": ("topk", "randomk", "sign", "qsgd")})  # CHOCO-SGD consensus step size gamma (compression only)
    hierarchy: str = key("none", GRAPH)  # none | node: exact average inside a node, then gossip between nodes over `topology`
    ranks_per_node: int = key(0, GRAPH, when={"hierarchy": ("node",)})  # hierarchy node: MPI ranks per node (0 = the ranks sharing memory, MPI_COMM_TYPE_SHARED)
    overlap: bool = key(False, CONSENSUS)  # the exchange of iteration t completes after the local step of t+1 (one-step-stale)
    # -- data and model -------------------------------------------------------------------
    dataset: str = key("digits", PROBLEM)  # digits (embedded stand-in, offline) | cifar10 | imagenet32 | multi30k (translation)
    data_dir: str = key("", PATHS)  # cifar10: the directory holding cifar-10-batches-py/; imagenet32: train_data_batch_1..10, val_data; multi30k: train/val/test_2016_flickr .en/.de
    model: str = key("resnet20", PROBLEM)  # model name: resnet20 | small_cnn (image data sets) | transformer (multi30k)
    width: float = key(1.0, PROBLEM)  # ResNet width factor (1 = ResNet-20, 0.27 M parameters; 3 = ResNet-20-3 of ImageNet-32)
    partition: str = key("iid", PROBLEM)  # which samples each replica reads (docs/partitions.md): iid (the paper's data centre: one shuffle per epoch, equal shards) | dirichlet: each class split over the replicas by Dir(dirichlet_alpha) | shards: label-sorted shards, shards_per_replica each
    dirichlet_alpha: float = key(0.5, PROBLEM, when={"partition": ("dirichlet",)})  # partition dirichlet: concentration alpha (0.1: a few classes per replica; large: the iid proportions)
    shards_per_replica: int = key(2, PROBLEM, when={"partition": ("shards",)})  # partition shards: label-sorted shards per replica (McMahan et al. 2017: 2)
    validation_split: float = key(0.0, PROBLEM)  # 0 = off: train on the whole training set, evaluate on the test set (the tables) | 0 < f < 1: hold out a fixed fraction f of the training set (0.1 = 5,000 CIFAR-10 images), train on the rest, evaluate on it instead of the test set (sweeps select on it); multi30k: any f > 0 evaluates on its own validation set, nothing held out
    # -- translation (dataset multi30k, model transformer; paper Sec. 4.2, 4.4) ------------
    vocab_size: int = key(8000, PROBLEM)  # joint source-target byte-level BPE vocabulary, trained on the training text
    max_len: int = key(128, PROBLEM)  # subwords kept per sentence
    d_model: int = key(256, PROBLEM)  # Transformer width (the base model's 512 halved)
    heads: int = key(4, PROBLEM)  # attention heads
    layers: int = key(3, PROBLEM)  # encoder and decoder layers each (see models/transformer.py for why 3)
    d_ff: int = key(1024, PROBLEM)  # feed-forward width
    dropout: float = key(0.1, PROBLEM)  # residual and embedding dropout (Vaswani et al. Sec. 5.4)
    label_smoothing: float = key(0.1, PROBLEM)  # Vaswani et al. Sec. 5.4 (the paper does not state it)
    # -- optimisation (paper Sec. 4.2 where it states a value; the rest is ours, as commented) ----
    optimizer: str = key("sgd", OPTIMIZATION)  # sgd (with momentum/nesterov below: the image recipe) | adam (the translation recipe); its state stays local
    adam_betas: list[float] = key(factory=lambda: [0.9, 0.98], role=OPTIMIZATION, when={"optimizer": ("adam",)})  # adam: (beta1, beta2), Vaswani et al.'s
    adam_eps: float = key(1e-9, OPTIMIZATION, when={"optimizer": ("adam",)})  # adam: epsilon, Vaswani et al.'s
    lr_schedule: str = key("step", OPTIMIZATION)  # step: warm-up, then lr / decay_factor at decay_fractions (base_lr, warmup_*) | inverse_sqrt: Vaswani et al.'s, one phase
    warmup_steps: int = key(4000, OPTIMIZATION, when={"lr_schedule": ("inverse_sqrt",)})  # inverse_sqrt: warm-up steps at global mini-batch 64, scaled down linearly by n * batch_size / 64
    lr_scale: float = key(1.0, OPTIMIZATION, when={"lr_schedule": ("inverse_sqrt",)})  # inverse_sqrt: lr = lr_scale * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5)
    epochs: float = key(300.0, OPTIMIZATION)  # training length in epochs of the whole training set
    batch_size: int = key(32, OPTIMIZATION)  # local mini-batch per replica
    base_lr: float = key(0.1, OPTIMIZATION, when={"lr_schedule": ("step",)})  # learning rate at global batch base_batch (linear scaling rule)
    lr_origin: str = key("", PROVENANCE)  # where base_lr comes from: "" = not stated | "untuned: <reason>" | "tuned: <sweep plan> <identity>" (configs/tuned_lr.toml; the closing line, campaigns and tables say "untuned")
    base_batch: int = key(128, OPTIMIZATION, when={"lr_schedule": ("step",)})  # global batch at which base_lr applies: peak lr = base_lr * n * batch_size / base_batch
    warmup_epochs: float = key(5.0, OPTIMIZATION, when={"lr_schedule": ("step",)})  # linear warm-up from warmup_lr to the peak lr (part of phase 1)
    warmup_lr: float = key(0.1, OPTIMIZATION, when={"lr_schedule": ("step",)})  # learning rate at iteration 0
    decay_fractions: list[float] = key(factory=lambda: [0.5, 0.75], role=OPTIMIZATION)  # lr /= decay_factor when these fractions of samples are seen
    decay_factor: float = key(10.0, OPTIMIZATION, when={"lr_schedule": ("step",)})  # divisor at each decay
    momentum: float = key(0.9, OPTIMIZATION, when={"optimizer": ("sgd",)})  # local momentum (stays on the replica, never gossiped); 0 = plain SGD
    nesterov: bool = key(True, OPTIMIZATION, when={"optimizer": ("sgd",)})  # Nesterov momentum, no dampening
    weight_decay: float = key(1e-4, OPTIMIZATION)  # L2 added to the gradient (our choice of 1e-4, the usual ResNet-20 value; the paper does not print it)
    weight_decay_bn: bool = key(True, OPTIMIZATION)  # true: weight decay on every parameter; false: none on normalisation layers' scale and shift (BN, LayerNorm)
    # -- consensus policy per phase (phase k = between decay k-1 and k) ------------------
    policies: list[str] = key(factory=lambda: ["gossip", "gossip", "gossip"], role=CONSENSUS)  # one per phase: allreduce | gossip | target | adaptive | csgd (centralized SGD: gradients averaged)
    target_factors: list[float] = key(factory=list, role=CONSENSUS)  # per phase: target = factor x Xi_max (target) or x EMA(phi) (adaptive); empty = all 1
    reference_trace: str = key("", INPUT)  # trace of the uncontrolled reference run whose per-phase Xi_max the target policy uses
    reference_traces: list[str] = key(factory=list, role=INPUT)  # per phase ("" where no target): the reference of each target phase, when they differ (Table 5); empty = reference_trace for all
    control_signal: str = key("xi", CONSENSUS)  # xi: exact Xi (research mode) | theta: the Theta bound, scalars only (practical mode, Sec. 5)
    max_gossip_steps: int = key(50, CONSENSUS)  # cap on gossip steps per iteration under control; iterations that hit it are counted
    measure_every: int = key(1, OBSERVATION)  # measure the exact Xi (before and after communication) every this many iterations; 0 = never
    phi_ema_beta: float = key(0.9, CONSENSUS)  # EMA(phi) = beta EMA + (1 - beta) phi, restarted at each phase
    # -- evaluation and output ------------------------------------------------------------
    eval_every: int = key(1, OBSERVATION)  # evaluate every this many epochs (and at the end)
    local_eval_samples: int = key(0, OBSERVATION)  # test images per local-model evaluation; 0 = the whole test set
    trace_flush_seconds: float = key(30.0, RESOURCES)  # the trace is flushed every epoch and at least this often
    max_iterations: int = key(0, STOP)  # stop after this many iterations (0 = run to the end); for smoke tests
    # -- sharpness (top Hessian eigenvalue of the training loss, Zhu et al.) -----------------
    sharpness_every: int = key(0, MEASUREMENT)  # measure lambda_max every this many epochs and at the end (0 = never)
    sharpness_samples: int = key(1000, MEASUREMENT)  # training images in the fixed, seeded subset (no augmentation, BN in eval mode)
    sharpness_method: str = key("lanczos", MEASUREMENT)  # lanczos | power: iteration on Hessian-vector products
    sharpness_tol: float = key(1e-3, MEASUREMENT)  # relative tolerance at which lambda_max counts as converged
    sharpness_max_hvps: int = key(100, MEASUREMENT)  # cap on Hessian-vector products per lambda_max
    sharpness_trace_probes: int = key(0, MEASUREMENT)  # Hutchinson probes for the Hessian trace (0 = no trace estimate)
    sharpness_replica: int = key(0, MEASUREMENT)  # global id of the local model measured besides the averaged one (-1 = none)
    # -- checkpoints ----------------------------------------------------------------------
    checkpoint_minutes: float = key(30.0, SAVING)  # periodic checkpoint at least this often (0 = only at phase ends and stops)
    keep_checkpoints: int = key(3, SAVING)  # periodic checkpoints kept (phase-end checkpoints are kept always)
    branch_from: str = key("", START)  # start from another run's phase checkpoint (e.g. a centralized run's phase 1)

    # -- derived --------------------------------------------------------------------------
    def replicas_per_rank(self, ranks: int) -> int:
        return self.n // ranks

    def peak_lr(self) -> float:
        return self.base_lr * self.n * self.batch_size / self.base_batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        lines = []
        for k, v in self.to_dict().items():
            lines.append(f"{k} = {json.dumps(v)}")  # JSON scalars and arrays are valid TOML here
        return "\n".join(lines) + "\n"


_HINTS = typing.get_type_hints(Config)
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Every key's default, read-only. A config written before a key existed behaved as its default: resume and
# branch (compat.check_compatible) and the tables (analysis.tables.identity) read an absent key so.
DEFAULTS = Config().to_dict()


ROLES = {name: f.metadata["role"] for name, f in FIELDS.items()}


def keys_with_role(**facets: bool) -> tuple[str, ...]:
    """The keys (in Config's order) whose role has these facet values, e.g. keys_with_role(resume=True)."""
    return tuple(k for k, r in ROLES.items() if all(getattr(r, f) == v for f, v in facets.items()))


RESUME_MAY_DIFFER = keys_with_role(resume=True)  # compat.RESUME_MUST_MATCH_EXCEPT
BRANCH_MUST_MATCH = keys_with_role(branch=True)  # compat
REFERENCE_MUST_MATCH = keys_with_role(reference=True)  # consensus.reference_xi_max
NOT_IDENTITY = keys_with_role(identity=False)  # analysis.runs.identity leaves them out
# The campaign's "same run" (a finished run is the plan's run) compares the identity (less its bookkeeping keys) and
# which run of the experiment it is.
SAME_RUN_EXCEPT = tuple(k for k, r in ROLES.items() if not (r.identity or r.run) or r.bookkeeping)


def inapplicable_keys(cfg: dict) -> frozenset:
    """The keys of a run's config (as its trace stores it) that nothing reads under the rest of it: the other
    optimizer's hyper-parameters, the other schedule's (a field's `when`), the keys of other workloads (the
    Transformer's for an image model, the width for the Transformer: workloads.spec). Tables leave them out, so
    that they neither label nor split an experiment."""
    full = {**DEFAULTS, **cfg}
    out = {k for k, f in FIELDS.items() if any(full.get(w) not in vals for w, vals in f.metadata.get("when", {}).items())}
    spec = spec_of(full.get("dataset")) or next((s for s in SPECS.values() if full.get("model") in s.models), None)
    return frozenset(out | (workload_keys() - set(spec.keys if spec else ())))


def _coerce(key: str, value):
    """Check value against the field's annotation; ints are accepted for floats."""
    hint = _HINTS[key]
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list of {item.__name__}")
        return [_check_scalar(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    return _check_scalar(key, hint, value)


def _check_scalar(key, typ, value):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ConfigError(f"{key}={value!r}: expected {typ.__name__}, got {type(value).__name__}")
    if typ is float and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: need a finite number")
    if typ is str and "\0" in value:
        raise ConfigError(f"{key}={value!r}: contains a NUL character")
    return value


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with value in TOML syntax (numbers, true/false, [lists], "strings");
    a bare word is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_toml(path: str, seen: tuple = (), sources: dict | None = None) -> dict:
    """The keys of a config file after its `base` chain; sources (if given) gets key -> the file that set it."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} is not a regular file")
    if os.path.getsize(path) > CONFIG_MAX_BYTES:
        raise ConfigError(f"config file {path!r} has {os.path.getsize(path)} bytes: a config is at most "
                          f"{CONFIG_MAX_BYTES} bytes of TOML")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {path!r} cannot be read: {e.strerror or e}") from None
    base = data.pop("base", None)  # `base = "other.toml"`: inherit, then override
    if base is not None:
        if not isinstance(base, str) or not base or "\0" in base:
            raise ConfigError(f"config file {path!r}: base={base!r}: expected the path of another config file "
                              f"(a string, relative to this file's directory)")
        bpath = os.path.join(os.path.dirname(path), base)
        chain = seen + (os.path.realpath(path),)
        if os.path.realpath(bpath) in chain:  # normalised: ./a.toml, a.toml and links to it are one file
            raise ConfigError(f"config file {path!r}: base={base!r} loops back to {bpath!r}: a base chain must end")
        if len(chain) >= BASE_DEPTH_MAX:
            raise ConfigError(f"config file {path!r}: base={base!r}: a base chain of more than {BASE_DEPTH_MAX} files")
        merged = read_toml(bpath, chain, sources)
        merged.update(data)
    else:
        merged = data
    if sources is not None:
        sources.update(dict.fromkeys(data, path))
    return merged


def load_config(path: str | None, overrides: list[str] = (), ranks: int = 1) -> Config:
    """Read a TOML file (or defaults), apply overrides, validate the values for `ranks` MPI processes."""
    sources: dict = {}
    data = read_toml(path, sources=sources) if path else {}
    for text in overrides:
        k, v = parse_override(text)
        data[k] = v
        sources.pop(k, None)
    try:
        return from_dict(data, ranks)
    except ConfigError as e:  # a value from a file: name the file too (a --set value is named by its key alone)
        key = re.match(r"(?:unknown config key\(s\) )?([A-Za-z_]\w*)", str(e))
        if key and key.group(1) in sources:
            raise ConfigError(f"config file {sources[key.group(1)]!r}: {e}") from None
        raise


def from_dict(data: dict, ranks: int = 1) -> Config:
    """A Config of `data` (key -> value), its values validated for `ranks` MPI processes (no file opened)."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, FIELDS, n=1, cutoff=0.6)) else k
                 for k in unknown]
        raise ConfigError(f"unknown config key(s) {', '.join(hints)}; the keys and their meaning are in "
                          f"hpc_dsgd/config.py (class Config) and the README")
    cfg = Config(**{k: _coerce(k, v) for k, v in data.items()})
    validate(cfg, ranks)
    return cfg


def reference_for_phase(cfg, k: int) -> str:
    """The reference trace whose Xi_max the target of phase k (1-based) uses."""
    refs = getattr(cfg, "reference_traces", None) or []
    return refs[k - 1] if refs else cfg.reference_trace


def validate(cfg: Config, ranks: int) -> None:
    """Impossible values, refused before any work (no MPI collective, no file opened here). What lives
    outside the config (data directory, reference traces, branch_from) is preflight.check_inputs'."""
    from .topology import Topology  # numpy only: validation imports no torch (the workloads' facts: workloads/spec.py)

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.n >= 1, f"n={cfg.n}: need at least one replica")
    need(cfg.n % ranks == 0, f"n={cfg.n} replicas cannot be split over {ranks} MPI ranks: n must be a multiple "
         f"of the rank count (e.g. n={ranks * max(1, round(cfg.n / ranks))}), or use a rank count dividing {cfg.n}")
    need(cfg.device in ("auto", "cpu", "cuda"), f"device={cfg.device!r}: choose auto, cpu or cuda")
    need(cfg.torch_threads >= 1, f"torch_threads={cfg.torch_threads}: need >= 1")
    need(cfg.replica_exec in REPLICA_EXECS, f"replica_exec={cfg.replica_exec!r}: choose one of {', '.join(REPLICA_EXECS)}")
    need(cfg.precision in PRECISIONS, f"precision={cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    Topology(cfg.topology, cfg.n, seed=cfg.seed, shape=tuple(cfg.torus_shape) if cfg.torus_shape else None,
             lazy=cfg.lazy_mixing)
    need(not cfg.torus_shape or cfg.topology == "torus", "torus_shape is set but topology is not 'torus'")
    spec = spec_of(cfg.dataset)
    need(spec is not None, f"dataset={cfg.dataset!r}: choose one of {', '.join(SPECS)}")
    for problem in spec.validate(cfg):  # the workload's own keys (model, width, the Transformer's, sharpness)
        need(False, problem)
    # the data keys' values (their fit to the training set's size is preflight's: data.partition.check_data_keys)
    need(cfg.partition in ("iid", "dirichlet", "shards"), f"partition={cfg.partition!r}: choose one of iid, dirichlet, shards")
    need(cfg.dirichlet_alpha > 0, f"dirichlet_alpha={cfg.dirichlet_alpha}: need a concentration > 0 "
         "(0.1: few classes per replica; 100: close to iid)")
    need(cfg.shards_per_replica >= 1, f"shards_per_replica={cfg.shards_per_replica}: need >= 1 (McMahan et al.: 2)")
    need(0 <= cfg.validation_split < 1, f"validation_split={cfg.validation_split}: need a fraction of the training "
         "set in [0, 1): 0 = off (evaluate on the test set), e.g. 0.1 = 5,000 CIFAR-10 images")
    need(cfg.partition == "iid" or spec.task != "translation", f"partition={cfg.partition!r}: translation "
         f"({cfg.dataset}) has no class labels to partition by; only partition = 'iid'")
    need(cfg.optimizer in OPTIMIZERS, f"optimizer={cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    need(len(cfg.adam_betas) == 2 and all(0 <= b < 1 for b in cfg.adam_betas),
         f"adam_betas={cfg.adam_betas}: need two values in [0, 1), e.g. [0.9, 0.98]")
    need(cfg.adam_eps > 0, f"adam_eps={cfg.adam_eps}: need > 0")
    need(cfg.lr_schedule in LR_SCHEDULES, f"lr_schedule={cfg.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    need(cfg.warmup_steps >= 1, f"warmup_steps={cfg.warmup_steps}: need >= 1")
    need(cfg.lr_scale > 0, f"lr_scale={cfg.lr_scale}: need > 0")
    if cfg.lr_schedule == "inverse_sqrt":
        need(not cfg.decay_fractions, f"decay_fractions={cfg.decay_fractions}: lr_schedule inverse_sqrt has no decays "
             "(the whole of training is one phase); set decay_fractions = [] and one policy")
    need(cfg.epochs > 0, f"epochs={cfg.epochs}: need a positive number of epochs")
    need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: need >= 1")
    need(cfg.base_lr > 0, f"base_lr={cfg.base_lr}: the learning rate must be positive")
    need(cfg.lr_origin == "" or cfg.lr_origin.startswith(("untuned", "tuned")),
         f"lr_origin={cfg.lr_origin!r}: say where base_lr comes from: \"\", \"untuned: <reason>\" or "
         "\"tuned: <sweep plan> <identity>\" (tools/make_paper_configs.py writes it from configs/tuned_lr.toml)")
    need(cfg.validation_split >= 0, f"validation_split={cfg.validation_split}: need >= 0 training samples (0 = off)")
    need(cfg.warmup_lr > 0, f"warmup_lr={cfg.warmup_lr}: the learning rate must be positive")
    need(cfg.base_batch >= 1, f"base_batch={cfg.base_batch}: need >= 1")
    need(0 <= cfg.warmup_epochs < cfg.epochs, f"warmup_epochs={cfg.warmup_epochs}: need 0 <= warmup_epochs < epochs={cfg.epochs}")
    fr = cfg.decay_fractions
    need(all(0 < a < 1 for a in fr) and fr == sorted(set(fr)),
         f"decay_fractions={fr}: need strictly increasing fractions inside (0, 1), e.g. [0.5, 0.75]")
    need(cfg.warmup_epochs <= fr[0] * cfg.epochs if fr else True,
         f"warmup_epochs={cfg.warmup_epochs}: warm-up belongs to phase 1 and must end by the first decay "
         f"at epoch {fr[0] * cfg.epochs if fr else 0:g}")
    need(RUN_NAME.fullmatch(cfg.name) is not None, f"name={cfg.name!r}: a run name is one directory name of at most 200 "
         "letters, digits and . _ - + = , @, starting with a letter, digit or _ (e.g. 'ring_n32_s0'): no '/', '..', NUL, "
         "space or leading '-'")
    need(bool(cfg.out_dir), "out_dir='': need a directory (e.g. 'runs')")
    need(0 <= cfg.seed < 2**32, f"seed={cfg.seed}: need 0 <= seed < 2**32")
    need(not os.path.exists(cfg.out_dir) or os.path.isdir(cfg.out_dir),
         f"out_dir={cfg.out_dir!r} exists and is not a directory")
    need(cfg.decay_factor >= 1, f"decay_factor={cfg.decay_factor}: need >= 1")
    need(0 <= cfg.momentum < 1, f"momentum={cfg.momentum}: need 0 <= momentum < 1")
    need(not cfg.nesterov or cfg.momentum > 0, "nesterov=true needs momentum > 0 (set nesterov=false for plain SGD)")
    need(cfg.weight_decay >= 0, f"weight_decay={cfg.weight_decay}: need >= 0")
    need(len(cfg.policies) == len(fr) + 1, f"policies={cfg.policies}: need one policy per phase, "
         f"{len(fr) + 1} for decay_fractions={fr}")
    for i, pol in enumerate(cfg.policies):
        need(pol in POLICIES, f"policies[{i}]={pol!r}: choose one of {', '.join(POLICIES)}")
    need(not cfg.target_factors or len(cfg.target_factors) == len(cfg.policies),
         f"target_factors={cfg.target_factors}: need one factor per phase ({len(cfg.policies)}) or none")
    need(all(f >= 0 for f in cfg.target_factors), f"target_factors={cfg.target_factors}: factors must be >= 0")
    need(cfg.control_signal in CONTROL_SIGNALS, f"control_signal={cfg.control_signal!r}: choose xi or theta")
    need(cfg.max_gossip_steps >= 1, f"max_gossip_steps={cfg.max_gossip_steps}: need >= 1")
    need(cfg.measure_every >= 0, f"measure_every={cfg.measure_every}: need >= 0 (0 = never)")
    need(0 <= cfg.phi_ema_beta < 1, f"phi_ema_beta={cfg.phi_ema_beta}: need 0 <= beta < 1")
    targets = [k for k, pol in enumerate(cfg.policies, 1) if pol == "target"]
    need(not cfg.reference_traces or len(cfg.reference_traces) == len(cfg.policies),
         f"reference_traces={cfg.reference_traces}: need one entry per phase ({len(cfg.policies)}, \"\" where the "
         "phase has no target) or none (reference_trace then serves every target phase)")
    for k in targets:
        need(bool(reference_for_phase(cfg, k)), f"policies[{k - 1}]='target' but phase {k} has no reference: set "
             "reference_trace (or reference_traces[" f"{k - 1}]) to the trace of the uncontrolled run of this "
             f"experiment (plain gossip in phase {k})")
    need(cfg.sharpness_every >= 0, f"sharpness_every={cfg.sharpness_every}: need >= 0 epochs (0 = never)")
    need(cfg.sharpness_samples >= 1, f"sharpness_samples={cfg.sharpness_samples}: need >= 1 training image")
    need(cfg.sharpness_method in SHARPNESS_METHODS,
         f"sharpness_method={cfg.sharpness_method!r}: choose {' or '.join(SHARPNESS_METHODS)}")
    need(0 < cfg.sharpness_tol < 1, f"sharpness_tol={cfg.sharpness_tol}: need a relative tolerance in (0, 1), e.g. 1e-3")
    need(cfg.sharpness_max_hvps >= 2, f"sharpness_max_hvps={cfg.sharpness_max_hvps}: need >= 2")
    need(cfg.sharpness_trace_probes >= 0, f"sharpness_trace_probes={cfg.sharpness_trace_probes}: need >= 0 (0 = none)")
    need(-1 <= cfg.sharpness_replica < cfg.n,
         f"sharpness_replica={cfg.sharpness_replica}: need a replica id in 0..{cfg.n - 1}, or -1 for none")
    need(cfg.eval_every >= 1, f"eval_every={cfg.eval_every}: need >= 1")
    need(cfg.local_eval_samples >= 0, f"local_eval_samples={cfg.local_eval_samples}: need >= 0 (0 = whole test set)")
    need(cfg.checkpoint_minutes >= 0, f"checkpoint_minutes={cfg.checkpoint_minutes}: need >= 0 (0 = phase ends only)")
    need(cfg.keep_checkpoints >= 1, f"keep_checkpoints={cfg.keep_checkpoints}: need >= 1")
    need(cfg.max_iterations >= 0, f"max_iterations={cfg.max_iterations}: need >= 0")
    from .algorithm_checks import check_config as check_algorithm

    if (why := check_algorithm(cfg)) is not None:
        raise ConfigError(why)
    _validate_comm(cfg, ranks, need)
    need(cfg.algorithm == "dsgd" or (cfg.compression == "none" and cfg.hierarchy == "none" and not cfg.overlap),
         f"algorithm={cfg.algorithm!r} with compression={cfg.compression!r}, hierarchy={cfg.hierarchy!r}, "
         f"overlap={cfg.overlap}: the communication modes gossip X only, not an algorithm's companions (a tracker, "
         "D2's correction, push-sum's weights); use algorithm='dsgd' with a mode, or the plain gossip mode")
    need(cfg.trace_flush_seconds >= 0, f"trace_flush_seconds={cfg.trace_flush_seconds}: need >= 0 (0 = every iteration)")


def _validate_comm(cfg: Config, ranks: int, need) -> None:
    """The communication mode's keys, and the combinations that make no sense (one line each, saying why)."""
    from .topology import Topology, TopologyError

    need(cfg.compression in COMPRESSIONS, f"compression={cfg.compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    need(0 < cfg.compression_ratio <= 1, f"compression_ratio={cfg.compression_ratio}: need a fraction in (0, 1]")
    need(1 <= cfg.qsgd_levels <= 32767, f"qsgd_levels={cfg.qsgd_levels}: need 1 <= levels <= 32767")
    need(0 < cfg.consensus_lr <= 1, f"consensus_lr={cfg.consensus_lr}: CHOCO-SGD's consensus step size needs 0 < gamma <= 1")
    need(cfg.hierarchy in HIERARCHIES, f"hierarchy={cfg.hierarchy!r}: choose one of {', '.join(HIERARCHIES)}")
    need(cfg.ranks_per_node >= 0, f"ranks_per_node={cfg.ranks_per_node}: need >= 0 (0 = from MPI's shared-memory split)")
    gossiping = [p for p in cfg.policies if p in ("gossip", "target", "adaptive")]
    controlled = [p for p in cfg.policies if p in ("target", "adaptive")]
    if cfg.compression != "none":
        need(cfg.topology not in TIME_VARYING + ("complete",),
             f"compression={cfg.compression!r} with topology={cfg.topology!r}: CHOCO-SGD keeps public copies of fixed "
             "neighbours; use a fixed sparse topology (ring, torus, exponential)")
        need(cfg.hierarchy == "none", f"compression={cfg.compression!r} with hierarchy={cfg.hierarchy!r}: "
             "compressed hierarchical gossip is not implemented; choose one of the two")
        need(not cfg.overlap, f"compression={cfg.compression!r} with overlap=true: overlapped compressed gossip is not "
             "implemented; choose one of the two")
        need(not controlled or cfg.control_signal == "xi", f"compression={cfg.compression!r} with control_signal="
             f"{cfg.control_signal!r}: the Theta bound Xi <= (2/p) Theta holds for a gossip step x <- W x, not for a "
             "CHOCO step; use control_signal = \"xi\"")
    if cfg.hierarchy == "node":
        need(not cfg.torus_shape, "torus_shape is set with hierarchy='node': the node topology's torus takes its "
             "most square shape; remove torus_shape")
        need(not cfg.overlap, "hierarchy='node' with overlap=true: overlapped hierarchical gossip is not implemented; "
             "choose one of the two")
        if cfg.ranks_per_node:
            need(ranks % cfg.ranks_per_node == 0, f"ranks_per_node={cfg.ranks_per_node} does not divide the {ranks} "
                 f"MPI ranks into nodes: choose a divisor of {ranks}")
            try:
                Topology(cfg.topology, ranks // cfg.ranks_per_node, seed=cfg.seed)
            except TopologyError as e:
                need(False, f"hierarchy='node' with {ranks // cfg.ranks_per_node} nodes: {e}")
    elif cfg.ranks_per_node:
        need(False, f"ranks_per_node={cfg.ranks_per_node} is set but hierarchy is 'none': set hierarchy = \"node\"")
    if cfg.overlap:
        need(cfg.topology != "complete", "overlap=true with topology='complete': exact averaging is one Allreduce, "
             "there is no neighbour exchange to overlap; use a sparse topology")
        need(not controlled, f"overlap=true with policies {cfg.policies}: target/adaptive control repeats gossip until "
             "Xi is at the target, but an overlapped exchange lands one iteration late; use gossip or allreduce")
        need("csgd" not in cfg.policies, f"overlap=true with policies {cfg.policies}: csgd averages gradients and "
             "has no exchange to overlap; use gossip or allreduce phases")
        need(bool(gossiping), f"overlap=true with policies {cfg.policies}: no phase gossips, so nothing overlaps")
