"""Claims about the sharpness measurement and the loss-surface slices (one process):
- power iteration and Lanczos find the top Hessian eigenvalue of models with a known Hessian (a
  quadratic; a linear model with squared loss) to far better than 1 %;
- Hutchinson's trace is within its stated standard error of the true trace of a known matrix, and the
  stated error is honest (coverage over many seeds, and its size against the closed-form variance);
- Hessian-vector products equal central finite differences of gradients on a small ResNet (float64);
- the loss-surface slice at the origin is the model's loss, and filter normalisation gives every
  direction filter the norm of the model's filter;
- bad values are refused with one line naming the value."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hpc_dsgd.analysis.surface import filter_normalized_direction, loss_acc, slice_1d, slice_2d
from hpc_dsgd.config import ConfigError, from_dict
from hpc_dsgd.data import load_dataset
from hpc_dsgd.models import build_model
from hpc_dsgd.sharpness import HessianOperator, hutchinson, lanczos, power_iteration, rank_batches, sharpness_subset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Quadratic(torch.nn.Module):
    """L(theta) = 1/2 theta^T A theta: the Hessian is A."""

    def __init__(self, d):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return self.theta


def spd_with_spectrum(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T


def quadratic_operator(A):
    model = Quadratic(A.shape[0])
    return HessianOperator(model, [(None, None)], 1, loss_sum=lambda out, y: 0.5 * out @ A @ out)


@pytest.mark.parametrize("method", [power_iteration, lanczos])
def test_top_eigenvalue_of_a_quadratic(method):
    eigs = [5.0, 4.0] + list(np.linspace(-3.0, 3.5, 38))
    A = spd_with_spectrum(eigs)
    op = quadratic_operator(A)
    r = method(op, op.d, tol=1e-6, max_hvps=400, seed=3)
    assert r.converged and r.tol_reached <= 1e-6
    assert abs(r.value - 5.0) / 5.0 < 1e-4  # within 1 %
    assert r.hvps == op.hvps and r.hvps < 400


def test_lanczos_finds_the_largest_algebraic_eigenvalue_power_the_largest_magnitude():
    """Documented difference: with a negative eigenvalue of larger magnitude, power iteration finds it."""
    A = spd_with_spectrum([2.0, 1.0, 0.5, -6.0] + [0.1] * 16, seed=1)
    op = quadratic_operator(A)
    assert lanczos(op, op.d, 1e-8, 100).value == pytest.approx(2.0, rel=1e-6)
    assert power_iteration(op, op.d, 1e-10, 500).value == pytest.approx(-6.0, rel=1e-6)


@pytest.mark.parametrize("method", [power_iteration, lanczos])
def test_top_eigenvalue_of_a_linear_model_with_squared_loss(method):
    """L = 1/(2N) sum ||W x + b - y||^2: H = (1/N) sum [x;1][x;1]^T (x) I_q, so lambda_max is the top
    eigenvalue of (1/N) Xt^T Xt with Xt = [X, 1]; the data come in two chunks, as on a rank."""
    g = torch.Generator().manual_seed(0)
    N, p, q = 60, 7, 3
    X = torch.randn(N, p, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, p, dtype=torch.float64)
    Y = torch.randn(N, q, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(p, q).double()
    op = HessianOperator(model, [(X[:25], Y[:25]), (X[25:], Y[25:])], N,
                         loss_sum=lambda out, y: 0.5 * (out - y).pow(2).sum())
    Xt = torch.cat([X, torch.ones(N, 1, dtype=torch.float64)], 1)
    want = float(torch.linalg.eigvalsh(Xt.T @ Xt / N)[-1])
    r = method(op, op.d, tol=1e-5, max_hvps=300, seed=0)
    assert r.converged
    assert abs(r.value - want) / want < 1e-3
    # and the whole operator is the Kronecker product: H e_k for a few unit vectors
    H = torch.kron(torch.eye(q, dtype=torch.float64), Xt.T @ Xt / N)  # rows (out, in|bias) ...
    # reorder to the parameter layout [W (q x p) row-major, b (q)]
    perm = [o * (p + 1) + i for o in range(q) for i in range(p)] + [o * (p + 1) + p for o in range(q)]
    H = H[perm][:, perm]
    for k in (0, 5, op.d - 1):
        e = torch.zeros(op.d, dtype=torch.float64)
        e[k] = 1.0
        torch.testing.assert_close(op(e), H[:, k], rtol=1e-12, atol=1e-12)


def test_hutchinson_trace_within_its_stated_error():
    A = spd_with_spectrum(list(np.linspace(-1.0, 4.0, 30)), seed=2)
    A = A + 0.3 * torch.ones_like(A)  # off-diagonal mass: the estimator has real variance
    true = float(torch.trace(A))
    def hvp(v):
        return A @ v

    est = hutchinson(hvp, 30, probes=40, seed=0)
    assert est.probes == 40 and est.stderr > 0
    assert abs(est.value - true) <= 3 * est.stderr
    # the stated error is honest: closed-form Var(z^T A z) = 2 sum_{i != j} A_ij^2 for Rademacher z
    var = 2.0 * float((A.pow(2).sum() - A.diagonal().pow(2).sum()))
    runs = [hutchinson(hvp, 30, probes=40, seed=s) for s in range(200)]
    cover = np.mean([abs(r.value - true) <= 2 * r.stderr for r in runs])
    assert 0.88 <= cover <= 0.99  # ~0.95 expected
    assert np.mean([r.stderr ** 2 * 40 for r in runs]) == pytest.approx(var, rel=0.15)
    # a diagonal matrix is exact with any Rademacher probe
    D = torch.diag(torch.linspace(1.0, 3.0, 10, dtype=torch.float64))
    assert hutchinson(lambda v: D @ v, 10, probes=3).value == pytest.approx(float(torch.trace(D)), rel=1e-14)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None)


def small_resnet(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet20", 10, 0.25).to(dtype)
    return model


def test_hvp_equals_finite_differences_of_gradients(digits):
    model = small_resnet(torch.float64)
    idx = sharpness_subset(0, len(digits.train_y), 24)
    batches = [(x.double(), y) for x, y in rank_batches(digits, idx, 0, 1, "cpu")]
    model.train()
    with torch.no_grad():  # non-trivial BN running statistics, then evaluation mode throughout
        for x, _ in batches:
            model(x)
        # off the ReLU kinks: at initialisation the zero-initialised residual BN scales put many ReLU
        # inputs at exactly 0, where the gradient jumps and no finite difference converges
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    op = HessianOperator(model, batches, len(idx))
    g = torch.Generator().manual_seed(5)
    v = torch.randn(op.d, generator=g, dtype=torch.float64)
    v /= v.norm()
    hv = op(v)
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    eps = 1e-6  # small enough that no ReLU crosses its kink between theta - eps v and theta + eps v

    def grad_at(t):
        torch.nn.utils.vector_to_parameters(t, model.parameters())
        return HessianOperator(model, batches, len(idx)).loss_grad()[2]

    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    assert hv.norm() > 1e-3
    assert float((hv - fd).norm() / hv.norm()) < 1e-6
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-6 * float(hv.abs().max()))


def test_filter_normalisation_and_slice_at_origin(digits):
    model = small_resnet()
    idx = sharpness_subset(1, len(digits.train_y), 40)
    batches = rank_batches(digits, idx, 0, 1, "cpu")
    d = filter_normalized_direction(model, seed=4)
    off = 0
    nfilt = 0
    for p in model.parameters():
        part = d[off:off + p.numel()].view(p.shape)
        off += p.numel()
        if p.dim() <= 1:
            assert (part == 0).all()  # biases and BN scale/shift: not perturbed (Li et al., ignore biasbn)
            continue
        w = p.detach().double().reshape(p.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(part.reshape(p.shape[0], -1).norm(dim=1), w, rtol=1e-12, atol=0)
        nfilt += p.shape[0]
    assert off == d.numel() and nfilt > 50
    assert not torch.equal(d, filter_normalized_direction(model, seed=5))
    torch.testing.assert_close(d, filter_normalized_direction(model, seed=4), rtol=0, atol=0)  # seeded
    # the slice at the origin is the model's own loss and accuracy (independent computation)
    model.eval()
    with torch.no_grad():
        outs = [(model(x), y) for x, y in batches]
    ref_loss = sum(float(F.cross_entropy(o, y, reduction="sum")) for o, y in outs) / len(idx)
    ref_acc = 100.0 * sum(int((o.argmax(1) == y).sum()) for o, y in outs) / len(idx)
    before = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
    loss, acc = slice_1d(model, d, [-0.5, 0.0, 0.5], batches)
    assert loss[1] == pytest.approx(ref_loss, rel=1e-6) and acc[1] == ref_acc
    assert loss[0] != pytest.approx(loss[1], rel=1e-3)
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(model.parameters()), before, rtol=0, atol=0)
    grid, _ = slice_2d(model, d, filter_normalized_direction(model, 9), [-0.5, 0.0, 0.5], [0.0, 0.25], batches)
    assert grid.shape == (2, 3) and grid[0, 1] == pytest.approx(ref_loss, rel=1e-6)
    assert grid[0, 0] == pytest.approx(loss[0], rel=1e-6)
    assert loss_acc(model, batches)[0] == pytest.approx(ref_loss, rel=1e-6)


def test_subset_is_fixed_and_seeded():
    a = sharpness_subset(3, 1000, 50)
    assert torch.equal(a, sharpness_subset(3, 1000, 50)) and len(set(a.tolist())) == 50
    assert not torch.equal(a, sharpness_subset(4, 1000, 50))
    with pytest.raises(ValueError, match="samples=2000"):
        sharpness_subset(0, 1000, 2000)


@pytest.mark.parametrize("key, value, words", [
    ("sharpness_every", -1, "sharpness_every=-1"),
    ("sharpness_samples", 0, "sharpness_samples=0"),
    ("sharpness_method", "arnoldi", "choose lanczos or power"),
    ("sharpness_tol", 0.0, "sharpness_tol=0.0"),
    ("sharpness_max_hvps", 1, "sharpness_max_hvps=1"),
    ("sharpness_trace_probes", -2, "sharpness_trace_probes=-2"),
    ("sharpness_replica", 8, "replica id in 0..7"),
    ("policies", ["csgd", "sgd", "csgd"], "policies[1]='sgd'"),
])
def test_bad_sharpness_and_policy_values_are_refused(key, value, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        from_dict({"n": 8, key: value})
    assert from_dict({"n": 8, "policies": ["gossip", "csgd", "csgd"]}).policies[1] == "csgd"


def test_sharpness_command_refuses_bad_input_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    for args, words in ((["sharpness", str(tmp_path / "none")], "no such directory"),
                        (["sharpness", str(tmp_path), "--samples", "0"], "--samples 0: need >= 1")):
        r = subprocess.run([sys.executable, "-m", "hpc_dsgd", *args], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpc_dsgd: error: ") and words in lines[0], r.stderr


def test_contour_levels_are_log_spaced_above_the_minimum():
    from hpc_dsgd.analysis.surface import contour_levels

    lv = contour_levels(2.0, 12.0, 16)
    h = lv - 2.0
    assert len(lv) == 16 and np.all(np.diff(lv) > 0) and math.isclose(h[0], 0.01) and math.isclose(lv[-1], 12.0)
    assert np.allclose(h[1:] / h[:-1], (1000.0) ** (1 / 15))  # constant ratio: log-spaced heights
    bowl = 2.0 + 10.0 * np.add.outer(np.linspace(-1, 1, 9) ** 2, np.linspace(-1, 1, 9) ** 2) / 2
    inside = np.sum(lv < 2.0 + 0.1 * 10.0)  # levels within the lowest tenth of the range (the basin)
    assert inside >= 10 and np.sum(np.linspace(2.0, 12.0, 16) < 3.0) <= 2  # linear spacing would give 1 or 2
    assert bowl.min() == 2.0


def test_contour_figure_has_a_colorbar_and_no_colliding_labels(tmp_path):
    """Two panels of quadratic bowls of different curvature: one shared colorbar, the contour labels, titles,
    axis labels and legends of each panel do not overlap one another (their rendered boxes are disjoint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from hpc_dsgd.analysis.surface import draw_contours

    a = np.linspace(-1, 1, 9)
    r2 = np.add.outer(a ** 2, a ** 2)
    runs = [("quickstart ckpt-000000220: D-SGD ring, n=8 x b=16, seed 0", 0.05 + 3.0 * r2),
            ("csgd ckpt-000000220: C-SGD, n=8 x b=16, seed 0", 0.04 + 1.0 * r2 + 0.3 * a[None, :])]
    fig = draw_contours(str(tmp_path / "c.png"), a, runs, 500, 0)
    try:
        assert (tmp_path / "c.png").stat().st_size > 10_000
        assert len(fig.axes) == 3  # two panels and one colorbar
        assert "log-spaced above the minimum" in fig.axes[2].get_ylabel()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes[:2]:
            texts = [t for t in ax.findobj(Text) if t.get_visible() and t.get_text().strip()]
            assert sum(1 for t in texts if t in ax.texts) >= 2  # some contour lines are labelled
            boxes = [t.get_window_extent(renderer) for t in texts]
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    finally:
        plt.close(fig)
