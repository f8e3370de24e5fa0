"""The Equivariant Neural Field decoder ``f_theta(x; z)`` (Flax NNX).

For a coordinate ``x`` and its ``k`` nearest latents ``(p_i, c_i, sigma_i)``:

1. ``a_i = a(x, p_i)`` (the bi-invariant), embedded twice by Fourier features with trainable
   frequencies and a linear layer: ``e_q(a_i)`` for the query and ``e_v(a_i)`` for the value.
2. query ``q_i = W_q e_q(a_i)``, key ``k_i = W_k c_i`` (``num_heads x att_dim``).
3. value ``v_i = W_2 gelu(W_1 (W_v c_i * (1 + gamma_i) + beta_i))`` with
   ``gamma_i, beta_i = W_f e_v(a_i)`` (FiLM: the geometry modulates the context).
4. weights ``softmax_i(s q_i . k_i - ||x - p_i||^2 / sigma_i^2)`` per head, with ``s`` the
   ``attention_scale`` (1 in the minimal reference code, ``1 / sqrt(att_dim)`` in transformers).
5. output: ``sum_i weights_i v_i``, heads concatenated, then an MLP head to ``num_out`` channels.

``x`` and ``p_i`` meet only inside ``a`` and the distance ``||x - p_i||``, both invariant, which
makes the decoder steerable: ``f(g x; g z) = f(x; z)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from enf_lib.config import ENFConfig
from enf_lib.geometry import BiInvariant, get_bi_invariant
from enf_lib.latents import Latents

Array = jax.Array
ApplyFn = Callable[[nnx.State, Array, Latents], Array]


class FourierEmbedding(nnx.Module):
    """Random Fourier features with trainable frequencies, then a linear layer.

    ``a (..., in_dim) -> (..., out_dim)``: ``Linear([a, sin(pi a W), cos(pi a W)])`` with
    ``W ~ N(0, freq^2)`` of shape ``(in_dim, num_freqs)``.
    """

    def __init__(self, in_dim: int, num_freqs: int, out_dim: int, freq: float, *, rngs: nnx.Rngs):
        self.freqs = nnx.Param(freq * jax.random.normal(rngs.params(), (in_dim, num_freqs)))
        self.linear = nnx.Linear(in_dim + 2 * num_freqs, out_dim, rngs=rngs)

    def features(self, a: Array) -> Array:
        """``(..., in_dim) -> (..., in_dim + 2 num_freqs)``: the features before the linear layer."""
        proj = jnp.pi * a @ self.freqs[...]
        return jnp.concatenate([a, jnp.sin(proj), jnp.cos(proj)], -1)

    def __call__(self, a: Array) -> Array:
        return self.linear(self.features(a))


class MLP(nnx.Module):
    """``depth`` hidden GELU layers of width ``hidden``, then a linear layer to ``out_dim``."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int, *, rngs: nnx.Rngs):
        dims = [in_dim] + [hidden] * depth
        self.hidden = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(dims[:-1], dims[1:])])
        self.out = nnx.Linear(dims[-1], out_dim, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        for layer in self.hidden:
            h = jax.nn.gelu(layer(h))
        return self.out(h)


def _compose(first: nnx.Linear, second: nnx.Linear) -> tuple[Array, Array]:
    """Kernel and bias of ``second(first(x))`` as one affine map."""
    kernel = first.kernel[...] @ second.kernel[...]
    return kernel, first.bias[...] @ second.kernel[...] + second.bias[...]


class EquivariantNeuralField(nnx.Module):
    """The ENF decoder. ``model(coords, latents) -> values``.

    Shapes: ``coords (N, 2)``; latents for one signal (pose ``(L, pose_dim)``, context
    ``(L, latent_dim)``, window ``(L, 1)``) give ``(N, num_out)``; latents with a leading batch
    axis ``B`` give ``(B, N, num_out)`` (the coordinates are shared).

    The parameters are those of the textbook computation in the module docstring; the forward
    pass evaluates the same function in a cheaper order (see :meth:`attend`).
    """

    def __init__(self, config: ENFConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = config
        self.bi_invariant: BiInvariant = get_bi_invariant(c.bi_invariant)
        heads, values = c.num_heads * c.att_dim, c.num_heads * c.head_value_dim
        a_dim = self.bi_invariant.dim
        self.embed_query = FourierEmbedding(a_dim, c.num_freqs, c.hidden_dim, c.freq_query, rngs=rngs)
        self.embed_value = FourierEmbedding(a_dim, c.num_freqs, c.hidden_dim, c.freq_value, rngs=rngs)
        self.query = nnx.Linear(c.hidden_dim, heads, rngs=rngs)
        self.key = nnx.Linear(c.latent_dim, heads, rngs=rngs)
        self.value_in = nnx.Linear(c.latent_dim, c.hidden_dim, rngs=rngs)
        self.film = nnx.Linear(c.hidden_dim, 2 * c.hidden_dim, rngs=rngs)
        self.value_hidden = nnx.Linear(c.hidden_dim, c.hidden_dim, rngs=rngs)
        self.value_out = nnx.Linear(c.hidden_dim, values, rngs=rngs)
        self.head = MLP(values, c.hidden_dim, c.num_out, depth=c.head_depth, rngs=rngs)

    def __call__(self, coords: Array, latents: Latents) -> Array:
        self._check_shapes(coords, latents)
        if latents.pose.ndim == 3:
            return jax.vmap(lambda z: self._decode(coords, z))(latents)
        return self._decode(coords, latents)

    def _check_shapes(self, coords: Array, z: Latents) -> None:
        c, pose_dim = self.config, self.bi_invariant.pose_dim
        if coords.ndim != 2 or coords.shape[-1] != 2:
            raise ValueError(f"coords must have shape (N, 2), got {coords.shape}")
        if z.pose.ndim not in (2, 3):
            raise ValueError(f"latent poses must be (L, {pose_dim}) or (B, L, {pose_dim}), got {z.pose.shape}")
        lead = z.pose.shape[:-2]
        expected = {"pose": lead + (c.num_latents, pose_dim),
                    "context": lead + (c.num_latents, c.latent_dim),
                    "window": lead + (c.num_latents, 1)}
        for name, shape in expected.items():
            if getattr(z, name).shape != shape:
                raise ValueError(
                    f"latents.{name} has shape {getattr(z, name).shape}, expected {shape} for "
                    f"{c.num_latents} latents, latent_dim {c.latent_dim} and the "
                    f"{self.bi_invariant.name!r} bi-invariant (pose_dim {pose_dim})")

    def neighbours(self, coords: Array, z: Latents) -> Array | None:
        """Indices ``(N, k)`` of each coordinate's ``k`` nearest latents (``None`` when dense).
        ``z`` holds one signal. ``lax.top_k`` finds them without sorting all ``L`` distances."""
        if self.config.neighbours == self.config.num_latents:
            return None
        d2 = jnp.sum(jnp.square(coords[:, None, :] - z.position[None]), -1)   # (N, L)
        return jax.lax.top_k(-d2, self.config.neighbours)[1]

    def attend(self, coords: Array, z: Latents) -> tuple[Array | None, Array, Array]:
        """Cross-attention of ``coords (N, 2)`` to one signal's latents.

        Returns neighbour indices ``(N, k)`` (``None`` when dense, then ``k = L``), attention
        weights ``(N, k, heads)`` and the attention output ``(N, heads * value_dim)``.

        Three rewrites make this cheaper than the textbook order without changing the result:
        the query maps are linear in the Fourier features ``phi_q``, so ``q . k`` is computed as
        ``phi_q . (M k)`` with ``M k`` formed once per latent; the embedding and FiLM layers of the
        value are composed into one affine map; the value MLP's last linear layer is applied
        after the weighted sum over neighbours (the weights sum to one), once per coordinate.
        """
        c = self.config
        n_lat, heads, att = c.num_latents, c.num_heads, c.att_dim
        idx = self.neighbours(coords, z)
        # Per latent: s q_h . k_h = phi_q . (M_h s k_h) + m_h . s k_h.
        m_kernel, m_bias = _compose(self.embed_query.linear, self.query)      # (F, H*A), (H*A,)
        key = self.key(z.context).reshape(n_lat, heads, att) * c.attention_scale
        key_phi = jnp.einsum("fha,lha->lhf", m_kernel.reshape(-1, heads, att), key)
        key_bias = jnp.einsum("ha,lha->lh", m_bias.reshape(heads, att), key)
        value_in = self.value_in(z.context)                                     # (L, hidden)
        n = coords.shape[0]
        if idx is None:
            def take(t: Array) -> Array:                    # every latent is a neighbour
                return jnp.broadcast_to(t, (n,) + t.shape)
        else:
            def take(t: Array) -> Array:                    # (L, ...) -> (N, k, ...)
                return t[idx]
        pose, window, key_phi, key_bias, value_in = map(
            take, (z.pose, z.window, key_phi, key_bias, value_in))
        a = self.bi_invariant(coords[:, None, :], pose)                        # (N, k, a_dim)
        phi_q, phi_v = self.embed_query.features(a), self.embed_value.features(a)
        d2 = jnp.sum(jnp.square(coords[:, None, :] - pose[..., :2]), -1)       # (N, k)
        logits = jnp.einsum("nkf,nkhf->nkh", phi_q, key_phi) + key_bias
        logits = logits - (d2 / (jnp.square(window[..., 0]) + 1e-8))[..., None]
        weights = jax.nn.softmax(logits, axis=1)                                # (N, k, H)
        film_kernel, film_bias = _compose(self.embed_value.linear, self.film)
        gamma, beta = jnp.split(phi_v @ film_kernel + film_bias, 2, -1)
        hidden = jax.nn.gelu(self.value_hidden(value_in * (1 + gamma) + beta))  # (N, k, hidden)
        mixed = jnp.einsum("nkh,nkd->nhd", weights, hidden)                    # (N, H, hidden)
        w_out = self.value_out.kernel[...].reshape(-1, heads, c.head_value_dim)  # (hidden, H, V)
        out = (jnp.einsum("nhd,dhv->nhv", mixed, w_out)
               + self.value_out.bias[...].reshape(heads, c.head_value_dim))
        return idx, weights, out.reshape(coords.shape[0], -1)

    def _decode(self, coords: Array, z: Latents) -> Array:
        return self.head(self.attend(coords, z)[2])


def functional(model: EquivariantNeuralField) -> tuple[ApplyFn, nnx.State]:
    """Split a model into a pure function ``apply(params, coords, latents)`` and its parameters.

    ``apply`` can be used inside ``jax.jit``, ``jax.grad`` and ``jax.vmap`` like any JAX function.
    """
    graphdef, params = nnx.split(model)

    def apply(params: nnx.State, coords: Array, latents: Latents) -> Array:
        return nnx.merge(graphdef, params)(coords, latents)

    return apply, params


def count_params(params: nnx.State | nnx.Module) -> int:
    """Number of scalar parameters in a parameter tree, or of a module's ``nnx.Param``s."""
    if isinstance(params, nnx.Module):
        params = nnx.state(params, nnx.Param)
    return sum(x.size for x in jax.tree.leaves(params))
