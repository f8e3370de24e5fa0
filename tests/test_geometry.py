"""Bi-invariants are invariant, and the decoder built on them is steerable: f(gx; gz) = f(x; z)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from enf_lib.config import ENFConfig
from enf_lib.geometry import BI_INVARIANTS, SE2, get_bi_invariant, rotation_matrix
from enf_lib.latents import Latents
from enf_lib.model import EquivariantNeuralField, functional

EQUIVARIANT = ["translation", "distance", "se2"]
seeds = st.integers(0, 2**31 - 1)


def random_latents(key, cfg: ENFConfig) -> Latents:
    bi = get_bi_invariant(cfg.bi_invariant)
    k_p, k_c, k_w = jax.random.split(key, 3)
    return Latents(
        pose=bi.random_poses(k_p, (cfg.num_latents,)),
        context=jax.random.normal(k_c, (cfg.num_latents, cfg.latent_dim)),
        window=jax.random.uniform(k_w, (cfg.num_latents, 1), minval=0.3, maxval=1.0),
    )


def steer_error(name: str, seed: int, k_nearest: int | None = 4) -> float:
    """max |f(gx; gz) - f(x; z)| for a random decoder, latents, coordinates and group element."""
    cfg = ENFConfig(num_latents=9, latent_dim=8, hidden_dim=32, att_dim=8, num_heads=2,
                    num_freqs=16, k_nearest=k_nearest, bi_invariant=name)
    k_model, k_z, k_x, k_g = jax.random.split(jax.random.key(seed), 4)
    model = EquivariantNeuralField(cfg, rngs=nnx.Rngs(k_model))
    apply, params = functional(model)
    z = random_latents(k_z, cfg)
    x = jax.random.uniform(k_x, (64, 2), minval=-1, maxval=1)
    g = model.bi_invariant.random_element(k_g)
    out = apply(params, x, z)
    out_g = apply(params, model.bi_invariant.act_on_coords(g, x), z.transform(model.bi_invariant, g))
    return float(jnp.max(jnp.abs(out_g - out)))


@pytest.mark.parametrize("name", EQUIVARIANT)
@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_bi_invariant_is_invariant(name, seed):
    bi = get_bi_invariant(name)
    k_x, k_p, k_g = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.uniform(k_x, (32, 2), minval=-1, maxval=1)
    p = bi.random_poses(k_p, (32,))
    g = bi.random_element(k_g)
    a = bi(x, p)
    a_g = bi(bi.act_on_coords(g, x), bi.act_on_poses(g, p))
    assert a.shape == (32, bi.dim)
    np.testing.assert_allclose(a_g, a, atol=1e-5)


@pytest.mark.parametrize("name", EQUIVARIANT)
@settings(max_examples=15, deadline=None)
@given(seed=seeds)
def test_decoder_is_steerable(name, seed):
    assert steer_error(name, seed) <= 1e-4


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_dense_decoder_is_steerable(name):
    assert steer_error(name, seed=3, k_nearest=None) <= 1e-4


def test_absolute_position_baseline_is_not_invariant():
    errors = [steer_error("absolute", seed) for seed in range(5)]
    assert min(errors) > 1e-2, errors


def test_se2_matches_the_textbook_formula():
    x = jnp.array([[0.3, -0.2]])
    p = jnp.array([[0.1, 0.4, 0.7]])
    expected = rotation_matrix(p[0, 2]).T @ (x[0] - p[0, :2])
    np.testing.assert_allclose(SE2()(x, p)[0], expected, atol=1e-6)


def test_se2_broadcasts_one_pose_against_many_coordinates():
    x = jnp.zeros((5, 4, 2))
    p = jnp.ones((4, 3))
    assert SE2()(x, p).shape == (5, 4, 2)


def test_group_actions_compose_like_the_group():
    bi = get_bi_invariant("se2")
    x = jnp.array([[0.5, 0.0]])
    g = jnp.array([0.0, 0.0, jnp.pi / 2])
    np.testing.assert_allclose(bi.act_on_coords(g, x), [[0.0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(bi.act_on_poses(g, jnp.array([[0.5, 0.0, 0.1]])),
                               [[0.0, 0.5, 0.1 + jnp.pi / 2]], atol=1e-6)


def test_unknown_bi_invariant_names_the_choices():
    with pytest.raises(ValueError, match="unknown bi-invariant 'rotation'.*se2"):
        get_bi_invariant("rotation")
    assert set(BI_INVARIANTS) == {"absolute", "translation", "distance", "se2"}
