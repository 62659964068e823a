"""Claims about the mixing matrices (pure numpy, no MPI): doubly stochastic W_t (directed_random: column-stochastic
only, push-sum's; tests/serial/test_push_sum.py), p as Assumption 1
defines it (checked against an independent eigenvalue computation), refusals that name the value."""
import numpy as np
import pytest

from hpc_dsgd.topology import TOPOLOGIES, Topology, TopologyError, gossip_steps_needed, torus_shape


def _sizes(name):
    return [4, 6, 8, 9, 16, 32] if name == "torus" else [1, 2, 3, 4, 5, 8, 16, 32]


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_W_is_doubly_stochastic_nonnegative(name):
    for n in _sizes(name):
        topo = Topology(name, n, seed=3)
        for t in range(7):
            W = topo.W(t)
            assert W.shape == (n, n)
            assert (W >= 0).all()
            np.testing.assert_allclose(W.sum(0), 1.0, atol=1e-12)
            if topo.doubly_stochastic:
                np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("name", ["ring", "torus", "complete"])
def test_p_of_symmetric_W_matches_eigenvalues(name):
    for n in [4, 9, 16, 32] if name == "torus" else [3, 5, 16, 32]:
        W = Topology(name, n).W(0)
        assert np.allclose(W, W.T)
        lam = np.sort(np.abs(np.linalg.eigvalsh(W)))[::-1]  # lam[0] = 1
        rho = 1.0 - lam[1]  # spectral gap
        assert Topology(name, n).p() == pytest.approx(1 - (1 - rho) ** 2, abs=1e-10)
        assert Topology(name, n).spectral_gap() == pytest.approx(rho, abs=1e-10)


def test_p_satisfies_assumption_1_on_random_X():
    rng = np.random.default_rng(0)
    for name in ["ring", "torus", "exponential", "complete"]:
        topo = Topology(name, 16)
        W, p = topo.W(0), topo.p()
        for _ in range(50):
            X = rng.normal(size=(16, 5))
            Xb = X.mean(0)
            assert ((W @ X - Xb) ** 2).sum() <= (1 - p) * ((X - Xb) ** 2).sum() + 1e-9


def test_ring_weights_and_known_p():
    W = Topology("ring", 5).W()
    assert W[0, 0] == W[0, 1] == W[0, 4] == pytest.approx(1 / 3) and W[0, 2] == 0
    np.testing.assert_allclose(Topology("ring", 2).W(), [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(Topology("ring", 1).W(), [[1.0]])
    assert Topology("ring", 1).p() == 1.0 and Topology("complete", 7).p() == pytest.approx(1.0)
    # ring n=16: lambda_2 = (1 + 2 cos(2 pi / 16)) / 3
    rho = 1 - (1 + 2 * np.cos(2 * np.pi / 16)) / 3
    assert Topology("ring", 16).p() == pytest.approx(1 - (1 - rho) ** 2)


def test_exponential_neighbours_are_powers_of_two():
    topo = Topology("exponential", 16)
    assert topo.in_neighbours(0) == sorted([(0 - h) % 16 for h in (1, 2, 4, 8)])
    assert np.allclose(topo.W(0)[0][topo.W(0)[0] > 0], 1 / 5)


def test_one_peer_exponential_cycles_and_averages_exactly_for_power_of_two():
    topo = Topology("one_peer_exponential", 16)
    assert topo.period == 4 and topo.time_varying
    for t in range(8):
        W = topo.W(t)
        assert (np.count_nonzero(W, axis=1) == 2).all()  # one peer per replica
        h = 2 ** (t % 4)
        assert W[5, (5 - h) % 16] == 0.5
    P = topo.W(3) @ topo.W(2) @ topo.W(1) @ topo.W(0)
    np.testing.assert_allclose(P, np.full((16, 16), 1 / 16), atol=1e-12)


def test_random_matching_is_shared_by_seed_and_changes_with_t():
    a, b = Topology("random_matching", 8, seed=5), Topology("random_matching", 8, seed=5)
    assert np.array_equal(a.W(3), b.W(3))
    assert not all(np.array_equal(a.W(0), a.W(t)) for t in range(1, 6))
    W = a.W(0)
    assert np.allclose(W, W.T) and (np.count_nonzero(W, axis=1) == 2).all()
    W7 = Topology("random_matching", 7, seed=1).W(0)
    assert sorted(np.count_nonzero(W7, axis=1)) == [1] + [2] * 6  # odd n: one replica unmatched
    assert 0 < a.p() < 1


def test_torus_shape_and_refusals():
    assert torus_shape(16) == (4, 4) and torus_shape(32) == (4, 8)
    assert Topology("torus", 12, shape=(3, 4)).W().shape == (12, 12)
    with pytest.raises(TopologyError, match=r"n=7.*ring"):
        Topology("torus", 7)
    with pytest.raises(TopologyError, match=r"torus_shape=\[3, 5\].*n=16"):
        Topology("torus", 16, shape=(3, 5))
    with pytest.raises(TopologyError, match="unknown"):
        Topology("hypercube", 8)
    with pytest.raises(TopologyError, match="n=0"):
        Topology("ring", 0)


def test_lemma_3_4_planner():
    p = Topology("ring", 32).p()
    k = gossip_steps_needed(p, 1.0, 0.25)
    assert (1 - p) ** (k / 2) <= 0.25 < (1 - p) ** ((k - 1) / 2)
    assert gossip_steps_needed(p, 0.2, 0.25) == 0
