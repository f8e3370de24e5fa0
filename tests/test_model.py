"""The decoder computes the textbook formula, in every configuration, as a pure function."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from enf_lib.config import ENFConfig
from enf_lib.latents import Latents, grid_positions, init_latents, init_latents_batch
from enf_lib.model import EquivariantNeuralField, count_params, functional

from test_geometry import random_latents

SMALL = ENFConfig(num_latents=9, latent_dim=8, hidden_dim=32, att_dim=8, num_heads=2,
                  num_freqs=16, k_nearest=4, bi_invariant="se2")


def textbook_decoder(model: EquivariantNeuralField, x: jax.Array, z: Latents) -> jax.Array:
    """The ENF written in the order of the paper, one coordinate at a time: ``x (2,) -> (C,)``."""
    c = model.config
    d2 = jnp.sum((x - z.position) ** 2, -1)
    idx = jnp.argsort(d2)[: c.neighbours]
    pose, ctx, win = z.pose[idx], z.context[idx], z.window[idx, 0]
    a = model.bi_invariant(x[None], pose)
    q = model.query(model.embed_query(a)).reshape(-1, c.num_heads, c.att_dim)
    k = model.key(ctx).reshape(-1, c.num_heads, c.att_dim)
    gamma, beta = jnp.split(model.film(model.embed_value(a)), 2, -1)
    h = model.value_in(ctx) * (1 + gamma) + beta
    v = model.value_out(jax.nn.gelu(model.value_hidden(h))).reshape(-1, c.num_heads, c.head_value_dim)
    logits = c.attention_scale * jnp.sum(q * k, -1) - (d2[idx] / win**2)[:, None]
    w = jax.nn.softmax(logits, axis=0)
    return model.head(jnp.sum(w[..., None] * v, 0).reshape(-1))


@pytest.mark.parametrize("bi", ["absolute", "translation", "distance", "se2"])
@pytest.mark.parametrize("k", [1, 4, None])
@pytest.mark.parametrize("scale", [1.0, 8 ** -0.5])
def test_fast_forward_equals_textbook(bi, k, scale):
    cfg = dataclasses.replace(SMALL, bi_invariant=bi, k_nearest=k, attention_scale=scale)
    model = EquivariantNeuralField(cfg, rngs=nnx.Rngs(1))
    z = random_latents(jax.random.key(2), cfg)
    x = jax.random.uniform(jax.random.key(3), (50, 2), minval=-1, maxval=1)
    expected = jax.vmap(lambda xi: textbook_decoder(model, xi, z))(x)
    np.testing.assert_allclose(model(x, z), expected, atol=2e-5, rtol=1e-4)


def test_dense_equals_k_equal_to_all_latents():
    dense = EquivariantNeuralField(dataclasses.replace(SMALL, k_nearest=None), rngs=nnx.Rngs(0))
    full_k = EquivariantNeuralField(dataclasses.replace(SMALL, k_nearest=9), rngs=nnx.Rngs(0))
    z = random_latents(jax.random.key(0), SMALL)
    x = jax.random.uniform(jax.random.key(1), (20, 2), minval=-1, maxval=1)
    np.testing.assert_allclose(dense(x, z), full_k(x, z), atol=1e-6)


def test_pure_function_under_jit_grad_and_vmap():
    model = EquivariantNeuralField(SMALL, rngs=nnx.Rngs(0))
    apply, params = functional(model)
    z = init_latents_batch(jax.random.key(0), 3, 9, 8, model.bi_invariant)
    x = jax.random.uniform(jax.random.key(1), (16, 2), minval=-1, maxval=1)
    out = jax.jit(apply)(params, x, z)
    assert out.shape == (3, 16, 3)
    single = jax.vmap(apply, in_axes=(None, None, 0))(params, x, z)
    np.testing.assert_allclose(out, single, atol=1e-6)
    grads = jax.grad(lambda p, zz: jnp.sum(apply(p, x, zz) ** 2), argnums=(0, 1))(params, z)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads[1].pose).sum()) > 0, "poses must receive a gradient"


def test_parameter_counts_of_the_reference_cifar_configuration():
    """The minimal reference code's CIFAR decoder has about 180k parameters; its values are
    ``hidden_dim`` wide per head. The default values are ``att_dim`` wide (as fast to learn per
    step, 11 % fewer FLOPs), which removes ``hidden_dim x heads x (hidden_dim - att_dim)``
    weights from ``value_out`` and ``heads x (hidden_dim - att_dim)`` from its bias and the head."""
    def count(cfg: ENFConfig) -> int:
        return count_params(functional(EquivariantNeuralField(cfg, rngs=nnx.Rngs(0)))[1])

    reference = count(ENFConfig(value_dim=128))
    assert 175_000 < reference < 185_000
    c = ENFConfig()
    narrower = c.num_heads * (c.hidden_dim - c.att_dim)
    assert reference - count(c) == narrower * (c.hidden_dim + 1 + c.num_out)


def test_any_number_of_output_channels_and_deeper_heads():
    cfg = dataclasses.replace(SMALL, num_out=8, head_depth=3)
    model = EquivariantNeuralField(cfg, rngs=nnx.Rngs(0))
    z = init_latents(jax.random.key(0), 9, 8, model.bi_invariant)
    assert model(jnp.zeros((5, 2)), z).shape == (5, 8)
    assert len(model.head.hidden) == 3


def test_wrong_shapes_raise_clear_errors():
    model = EquivariantNeuralField(SMALL, rngs=nnx.Rngs(0))
    z = init_latents(jax.random.key(0), 9, 8, model.bi_invariant)
    with pytest.raises(ValueError, match=r"coords must have shape \(N, 2\)"):
        model(jnp.zeros((5, 3)), z)
    with pytest.raises(ValueError, match="latents.context has shape"):
        model(jnp.zeros((5, 2)), z.replace(context=jnp.zeros((9, 7))))
    with pytest.raises(ValueError, match="pose_dim 3"):
        model(jnp.zeros((5, 2)), z.replace(pose=z.pose[:, :2]))
    with pytest.raises(ValueError, match="latents.pose has shape"):
        model(jnp.zeros((5, 2)), init_latents(jax.random.key(0), 16, 8, model.bi_invariant))


@pytest.mark.parametrize("num", [1, 5, 16, 17, 30])
def test_grid_positions_keep_every_latent_inside_the_square(num):
    pos = np.asarray(grid_positions(num))
    assert pos.shape == (num, 2)
    assert np.all(np.abs(pos) < 1)
    assert len({tuple(p) for p in pos.round(6)}) == num, "positions must be distinct"


def test_grid_positions_for_a_square_number_are_cell_centres():
    pos = np.asarray(grid_positions(4))
    np.testing.assert_allclose(sorted(set(pos[:, 0])), [-0.5, 0.5])
    np.testing.assert_allclose(sorted(set(pos[:, 1])), [-0.5, 0.5])


def test_init_latents_follow_the_reference_recipe():
    bi = EquivariantNeuralField(SMALL, rngs=nnx.Rngs(0)).bi_invariant
    z = init_latents(jax.random.key(0), 16, 8, bi)
    assert z.pose.shape == (16, 3) and z.context.shape == (16, 8) and z.window.shape == (16, 1)
    np.testing.assert_allclose(z.context, 1 / 8)
    np.testing.assert_allclose(z.window, 0.5)
    assert float(jnp.abs(z.position - grid_positions(16)).max()) < 0.15
    assert float(z.pose[:, 2].std()) > 0.5, "SE(2) orientations are drawn uniformly"
