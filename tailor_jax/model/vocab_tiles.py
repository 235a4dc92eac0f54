"""Vocabulary-sized arrays handled a tile of rows at a time: the embedding lookup's gradient, and
the slicing helpers the chunked log-probs (`model.logprobs`) share.

The gradient of `jnp.take(table, ids)` is a scatter-add into a zero [V, H] array; XLA:CPU runs a
16-bit scatter-add on a float32 [V, H] copy (0.5 GiB at qwen2.5-0.5b, on top of the gradient
itself). `embed_lookup` builds the same gradient a vocabulary tile at a time instead: each tile's
rows are accumulated in float32 ([tile, H], small) and written in the table's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

TILE_ELEMENTS = 1 << 24  # float32 elements of one [tile, H] accumulator of the lookup's gradient (64 MiB)


def _as_bits(x: jax.Array) -> jax.Array:
    # XLA:CPU slices and updates a 16-bit float array through a float32 copy of the whole array, which
    # it hoists out of a loop (0.5 GiB for qwen2.5-0.5b's embedding); as same-width integers it does not.
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype.itemsize == 2 else x


def _from_bits(bits: jax.Array, dtype) -> jax.Array:
    return jax.lax.bitcast_convert_type(bits, dtype) if bits.dtype != dtype else bits


def slice_rows(x: jax.Array, start: jax.Array, size: int, axis: int = 0) -> jax.Array:
    """`x[start:start + size]` along `axis` (a traced start), without a float32 copy on CPU."""
    return _from_bits(jax.lax.dynamic_slice_in_dim(_as_bits(x), start, size, axis=axis), x.dtype)


def update_rows(x: jax.Array, update: jax.Array, start: jax.Array, axis: int = 0) -> jax.Array:
    """`x` with `update` written at `start` along `axis`, without a float32 copy on CPU."""
    return _from_bits(jax.lax.dynamic_update_slice_in_dim(_as_bits(x), _as_bits(update), start, axis=axis), x.dtype)


def tile_starts(i: jax.Array, tile: int, total: int) -> tuple[jax.Array, jax.Array]:
    """(start, fresh) of tile i of `total` rows in tiles of `tile`: the last tile is shifted left to
    end at `total`, and `fresh` [tile] marks its rows no earlier tile covered."""
    start = jnp.minimum(i * tile, total - tile)
    return start, start + jnp.arange(tile, dtype=jnp.int32) >= i * tile


def zeros_when_ready(shape, dtype, ready: jax.Array) -> jax.Array:
    """Zeros of `shape` that cannot be made before `ready` is computed. A plain zero array has no
    inputs, and XLA:CPU's scheduler makes such arrays early: a [V, H] gradient's zero start would
    then be held through the whole forward and backward pass (0.4 GiB at qwen2.5-1.5b)."""
    zero = jax.lax.optimization_barrier((jnp.zeros((), dtype), ready))[0]
    return jnp.broadcast_to(zero, shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def embed_lookup(table: jax.Array, ids: jax.Array, tile_elements: int = TILE_ELEMENTS) -> jax.Array:
    """`jnp.take(table, ids, axis=0)`: [V, H] x int [...] -> [..., H]; ids must lie in [0, V). The
    gradient wrt `table` is built a vocabulary tile at a time (see the module docstring)."""
    return jnp.take(table, ids, axis=0)


def _lookup_fwd(table, ids, tile_elements):
    return jnp.take(table, ids, axis=0), (ids, jnp.zeros((0,), table.dtype), table.shape)


def _lookup_bwd(tile_elements, residuals, d_out):
    ids, dtype_of, (vocab, width) = residuals
    dtype = dtype_of.dtype
    flat_ids = ids.reshape(-1).astype(jnp.int32)
    flat_d = d_out.reshape(-1, width).astype(jnp.float32)
    tile = max(1, min(vocab, tile_elements // width))

    # The gradient is carried as its bits (16-bit floats: uint16). Besides sparing XLA:CPU's float32
    # copy, the carry's zero start then differs from the LM head's (model.logprobs), so XLA does not
    # share one zero [V, H] buffer between the two loops and keep it alive from the first to the second.
    def one(bits, i):
        start, fresh = tile_starts(i, tile, vocab)
        local = flat_ids - start
        mine = (flat_ids >= i * tile) & (local < tile)
        rows = jnp.zeros((tile, width), jnp.float32).at[jnp.where(mine, local, tile)].add(flat_d, mode="drop")
        old = jax.lax.dynamic_slice_in_dim(bits, start, tile, axis=0)
        rows = jnp.where(fresh[:, None], _as_bits(rows.astype(dtype)), old)
        return jax.lax.dynamic_update_slice_in_dim(bits, rows, start, axis=0), None

    zeros = zeros_when_ready((vocab, width), _as_bits(jnp.zeros((), dtype)).dtype, flat_d)
    bits, _ = jax.lax.scan(one, zeros, jnp.arange(-(-vocab // tile)))
    return _from_bits(bits, dtype), None


embed_lookup.defvjp(_lookup_fwd, _lookup_bwd)
