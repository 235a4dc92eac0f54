"""Grouped-query softmax attention behind one interface, with the implementation chosen per platform.

Every caller describes *which* keys a query may see with an `AttentionMask` (causal with an
offset, key validity, packed segments) instead of a dense [B, T, S] boolean array, so that each
implementation can build only the part of the mask it needs:

  dense    today's reference path: float32 scores [B, H, T, S] in query chunks of
           `query_chunk` rows that skip the causal upper triangle. Fast on CPU; the backward pass
           keeps every chunk's probabilities, so training memory is quadratic in the length.
  chunked  the same chunks, each under `jax.checkpoint`: the backward pass recomputes a chunk's
           scores instead of keeping them, so the compiled temporaries are linear in the length
           (one chunk's scores at a time). Pure JAX, every platform.
  xla      `jax.nn.dot_product_attention(implementation="xla")` with the dense mask (quadratic).
  cudnn    `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN flash attention on
           NVIDIA GPUs, bfloat16/float16 only.
  splash   the Pallas TPU splash-attention kernel shipped with JAX (see `splash_attention`).
  auto     cudnn on GPU for bfloat16/float16 (xla for float32), splash on TPU where the shapes fit
           its blocks (chunked otherwise), chunked on CPU; with a KV cache (query offset only
           known at run time): dense on CPU, xla elsewhere.

The sampler's decode step over a prompt cache shared by a prompt's G rows has its own kernel,
`shared_prompt_attention` (one query per row; no choice of implementation).

Masked scores are the float32 minimum, not -inf, so a query that may see no key (a padding
position) gets a finite average instead of NaN, in every implementation above
(`shared_prompt_attention` uses -inf: its rows always see their own newest slot).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tailor_jax.errors import TailorError

from tailor_jax.model.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS
_MASKED = float(np.finfo(np.float32).min)

# XLA's CPU compiler removes optimization barriers (pass "cse_barrier_expander") before CSE and
# scheduling. `jax.checkpoint` relies on them to keep its recomputation from being merged back
# into the forward pass, and the chunked attention relies on them to run its chunks one after the
# other, so on CPU neither shows in the compiled memory unless the pass is off. Compile with these
# options (`lowered.compile(compiler_options=CPU_KEEP_BARRIERS)`, or the same flag in XLA_FLAGS)
# wherever the CPU compile stands in for a device's memory (benchmarks, memory plans).
CPU_KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


@struct.dataclass
class AttentionMask:
    """Which key slot s a query t may attend, for a batch of B rows.

    Query t sits at key slot `offset + t` and sees slot s when s <= offset + t (causal), the slot
    holds a real token (`key_valid[b, s]`, None: all do), and, for packed sequences, the query's
    segment equals the key's and the key's is not 0 (`q_segments` [B, T], `k_segments` [B, S]).
    The offset is `static_offset` (a Python int, known at trace time: 0 for a forward pass without
    a cache, P for a continuation after a shared prompt of P slots) plus `cache_index` (an int32
    scalar known only at run time: the KV cache's next slot), so that the static part survives
    `jax.checkpoint` / `nnx.remat`, which turn every pytree leaf into a tracer.
    """

    key_valid: jax.Array | None = None  # bool [B, S]
    q_segments: jax.Array | None = None  # int [B, T]
    k_segments: jax.Array | None = None  # int [B, S]
    cache_index: jax.Array | None = None  # int32 scalar
    static_offset: int = struct.field(pytree_node=False, default=0)

    @property
    def is_static(self) -> bool:
        """The query slots are known at trace time (no KV cache index)."""
        return self.cache_index is None

    @property
    def offset(self):
        return self.static_offset if self.cache_index is None else self.cache_index + self.static_offset

    def block(self, start: int, end: int, keys: int) -> jax.Array:
        """bool [B or 1, end - start, keys]: queries [start, end) against key slots [0, keys)."""
        rows = jnp.arange(start, end, dtype=jnp.int32)[:, None] + self.offset
        allowed = (jnp.arange(keys, dtype=jnp.int32)[None, :] <= rows)[None]
        if self.key_valid is not None:
            allowed = allowed & self.key_valid[:, None, :keys]
        if self.q_segments is not None:
            k_seg = self.k_segments[:, None, :keys]
            allowed = allowed & (self.q_segments[:, start:end, None] == k_seg) & (k_seg != 0)
        return allowed

    def dense(self, length: int, keys: int) -> jax.Array:
        return self.block(0, length, keys)


def _platform() -> str:
    """The default backend's platform ("cpu", "gpu", "tpu"); tests monkeypatch it."""
    return jax.default_backend()


def select_implementation(name: str, dtype, mask: AttentionMask, length: int, keys: int) -> str:
    """The implementation `name` resolves to ("auto" by platform, dtype and mask; others as given)."""
    if name not in IMPLEMENTATIONS:
        raise TailorError(f"model config: attention must be one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    if name != "auto":
        return name
    platform = _platform()
    if not mask.is_static:  # decoding against a KV cache: forward only, no backward to keep
        return "dense" if platform == "cpu" else "xla"
    if platform == "gpu":
        return "cudnn" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    if platform == "tpu":
        return "splash" if splash_supported(length, keys) else "chunked"
    return "chunked"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *,
              implementation: str = "auto", query_chunk: int = 64) -> jax.Array:
    """Softmax attention of q [B, T, Hkv, G, D] over k/v [B, S, Hkv, D]; output [B, T, Hkv, G, D].

    Scores and softmax are float32; the output has q's dtype.
    """
    length, keys = q.shape[1], k.shape[1]
    impl = select_implementation(implementation, q.dtype, mask, length, keys)
    if impl in ("dense", "chunked"):
        return chunked_attention(q, k, v, mask, query_chunk, recompute=impl == "chunked")
    if impl in ("xla", "cudnn"):
        return dot_product_attention(q, k, v, mask, impl)
    return splash_attention(q, k, v, mask)


def shared_prompt_attention(q, prompt_k, prompt_v, prompt_mask, own_k, own_v, own_valid) -> jax.Array:
    """One new query per row over its prompt's keys (shared by the G rows of that prompt) and the
    row's own completion keys, in one softmax: the sampler's decode step (`Attention.decode_step`).

    q [R, Hkv, g, D] (R = B * G rows; row r continues prompt r // G); prompt_k [B, Hkv, D, P],
    prompt_v [B, Hkv, P, D], prompt_mask bool [B, P]; own_k [R, Hkv, D, N], own_v [R, Hkv, N, D],
    own_valid bool [N] (the same slots for every row). Keys are stored transposed ([D, slots]) and
    values not, the layouts these products read fastest on CPU. Returns [R, Hkv, g, D] in q's
    dtype; scores and softmax are float32. A row always sees its own newest slot, so no row is
    fully masked and -inf is safe here.
    """
    batch, rows = prompt_mask.shape[0], q.shape[0]
    group, (_, kv_heads, q_per_kv, head_dim) = rows // batch, q.shape
    dtype = q.dtype
    q = q.astype(jnp.float32) * head_dim**-0.5
    # Prompt part: the G rows of a prompt share its keys -> one [G * g, D] x [D, P] product.
    q_grouped = q.reshape(batch, group, kv_heads, q_per_kv, head_dim)
    prompt_scores = jnp.einsum("bjkgd,bkdp->bjkgp", q_grouped, prompt_k.astype(jnp.float32))
    prompt_scores = jnp.where(prompt_mask[:, None, None, None, :], prompt_scores, -jnp.inf)
    # Own part: multiply-and-reduce (a matrix-vector product per row and head).
    own_scores = jnp.sum(q[..., None] * own_k.astype(jnp.float32)[:, :, None], axis=-2)  # [R, Hkv, g, N]
    own_scores = jnp.where(own_valid, own_scores, -jnp.inf)

    prompt_scores = prompt_scores.reshape(rows, kv_heads, q_per_kv, -1)
    top = jnp.maximum(jnp.max(prompt_scores, axis=-1), jnp.max(own_scores, axis=-1))[..., None]
    prompt_weights = jnp.exp(prompt_scores - top)
    own_weights = jnp.exp(own_scores - top)
    norm = jnp.sum(prompt_weights, axis=-1) + jnp.sum(own_weights, axis=-1)  # [R, Hkv, g]
    prompt_out = jnp.einsum(
        "bjkgp,bkpd->bjkgd", prompt_weights.reshape(batch, group, kv_heads, q_per_kv, -1),
        prompt_v.astype(jnp.float32),
    ).reshape(rows, kv_heads, q_per_kv, head_dim)
    own_out = jnp.sum(own_weights[..., None] * own_v.astype(jnp.float32)[:, :, None], axis=-2)
    return ((prompt_out + own_out) / norm[..., None]).astype(dtype)


def _block_attention(q, k, v, mask: AttentionMask, start: int, end: int, keys: int):
    """Queries [start, end) of q [B, Hkv, G, T, D] over key slots [0, keys) of k/v [B, Hkv, S, D]."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bkgtd,bksd->bkgts", q[:, :, :, start:end], k[:, :, :keys],
                        preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask.block(start, end, keys)[:, None, None], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, v[:, :, :keys])


def _chunks(length: int, keys: int, mask: AttentionMask, query_chunk: int) -> tuple[tuple[int, int, int], ...]:
    """(start, end, keys seen) per query chunk: with a static offset chunk i reads only the keys
    up to its last row, which skips the causal upper triangle (about half the score matrix)."""
    step = query_chunk if 0 < query_chunk < length else length
    return tuple(
        (start, min(start + step, length), min(keys, mask.static_offset + min(start + step, length)) if mask.is_static else keys)
        for start in range(0, length, step)
    )


def chunked_attention(q, k, v, mask: AttentionMask, query_chunk: int, *, recompute: bool) -> jax.Array:
    """Queries in chunks of `query_chunk` rows (0: one chunk), each chunk over only the keys it can see.

    `recompute=False` is the reference ("dense") path: plain autodiff, whose backward pass keeps
    every chunk's probabilities (quadratic in the length). `recompute=True` ("chunked") is
    `_flash_chunks`: the same forward, but the backward pass recomputes each chunk's scores from
    q, k and the chunk's softmax statistics, one chunk at a time, so its temporaries are one
    chunk's scores (linear in the length).
    """
    length, keys = q.shape[1], k.shape[1]
    q = jnp.transpose(q, (0, 2, 3, 1, 4))  # [B, Hkv, G, T, D]: batched matmuls need no further transposes
    k, v = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [B, Hkv, S, D]
    if recompute:
        out = _flash_chunks(q, k, v, mask, _chunks(length, keys, mask, query_chunk))
    else:
        chunk = query_chunk if mask.is_static else 0  # the reference decodes against a cache in one block
        outs = [_block_attention(q, k, v, mask, start, end, seen)
                for start, end, seen in _chunks(length, keys, mask, chunk)]
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return jnp.transpose(out, (0, 3, 1, 2, 4))  # [B, T, Hkv, G, D]


def _chunk_forward(q, k, v, mask: AttentionMask, start: int, end: int, seen: int):
    """One chunk: output [B, Hkv, G, rows, D] and its softmax max and sum (float32, keepdims)."""
    scale = q.shape[-1] ** -0.5
    scores = jnp.einsum("bkgtd,bksd->bkgts", q[:, :, :, start:end], k[:, :, :seen],
                        preferred_element_type=jnp.float32) * scale
    allowed = mask.block(start, end, seen)[:, None, None]
    scores = jnp.where(allowed, scores, _MASKED)
    top = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - top)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bksd->bkgtd", (weights / total).astype(q.dtype), v[:, :, :seen])
    return out, top, total


def _serialised(values, after):
    """`values` unchanged, but not available before `after` is computed: XLA's CPU scheduler
    otherwise runs the independent chunks side by side and keeps all their scores alive. The
    barrier also keeps XLA from merging the backward pass's recomputation with the forward pass
    (it would then keep e.g. each chunk's softmax max broadcast to the chunk's full score shape)."""
    return jax.lax.optimization_barrier((values, after))[0]


def _flash_forward(q, k, v, mask, chunks):
    outs, stats, previous = [], [], None
    for start, end, seen in chunks:
        q, k, v = _serialised((q, k, v), previous)
        out, top, total = _chunk_forward(q, k, v, mask, start, end, seen)
        outs.append(out)
        stats.append((top, total))
        previous = out
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out, (q, k, v, mask, out, tuple(stats))


def _flash_backward(chunks, residuals, d_out):
    """The flash-attention backward pass, chunk by chunk (last chunk first), each chunk's scores
    recomputed from q, k and its softmax statistics; dK and dV accumulate in float32."""
    q, k, v, mask, out, stats = residuals
    dt, scale = q.dtype, q.shape[-1] ** -0.5
    dk, dv = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
    dq_parts, previous = [], None
    for (start, end, seen), (top, total) in reversed(list(zip(chunks, stats))):
        q, k, v, d_out, out, top, total = _serialised((q, k, v, d_out, out, top, total), previous)
        q_c, d_c, o_c = q[:, :, :, start:end], d_out[:, :, :, start:end], out[:, :, :, start:end]
        scores = jnp.einsum("bkgtd,bksd->bkgts", q_c, k[:, :, :seen], preferred_element_type=jnp.float32) * scale
        allowed = mask.block(start, end, seen)[:, None, None]
        probs = jnp.exp(jnp.where(allowed, scores, _MASKED) - top) / total
        dv = dv.at[:, :, :seen].add(jnp.einsum("bkgts,bkgtd->bksd", probs.astype(dt), d_c,
                                               preferred_element_type=jnp.float32))
        d_probs = jnp.einsum("bkgtd,bksd->bkgts", d_c, v[:, :, :seen], preferred_element_type=jnp.float32)
        delta = jnp.sum(d_c.astype(jnp.float32) * o_c.astype(jnp.float32), axis=-1, keepdims=True)
        d_scores = (jnp.where(allowed, probs * (d_probs - delta), 0.0) * scale).astype(dt)
        dq_parts.append(jnp.einsum("bkgts,bksd->bkgtd", d_scores, k[:, :, :seen], preferred_element_type=jnp.float32))
        dk = dk.at[:, :, :seen].add(jnp.einsum("bkgts,bkgtd->bksd", d_scores, q_c,
                                               preferred_element_type=jnp.float32))
        previous = (dk, dv, dq_parts[-1])  # every result of this chunk, so that none waits to the end
    dq = dq_parts[0] if len(dq_parts) == 1 else jnp.concatenate(dq_parts[::-1], axis=3)
    no_mask_cotangent = jax.tree.map(lambda _: None, mask)
    return dq.astype(dt), dk.astype(k.dtype), dv.astype(v.dtype), no_mask_cotangent


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash_chunks(q, k, v, mask: AttentionMask, chunks):
    """Chunked attention whose backward pass keeps no scores (see `_flash_backward`)."""
    return _flash_forward(q, k, v, mask, chunks)[0]


_flash_chunks.defvjp(lambda q, k, v, mask, chunks: _flash_forward(q, k, v, mask, chunks), _flash_backward)


def dot_product_attention(q, k, v, mask: AttentionMask, implementation: str) -> jax.Array:
    """Through `jax.nn.dot_product_attention` ("xla" or "cudnn"), which takes q as [B, T, N, D].

    A plain causal mask (offset 0, T == S, no padding, no segments) goes as `is_causal` (cuDNN then
    skips the masked blocks); any other mask goes as a boolean [B, 1, T, S] array, which the cuDNN
    path turns into an additive bias of that shape (one per call, not per head).
    """
    batch, length, kv_heads, groups, head_dim = q.shape
    keys = k.shape[1]
    plain_causal = (mask.is_static and mask.static_offset == 0 and length == keys
                    and mask.key_valid is None and mask.q_segments is None)
    dense = None if plain_causal else jnp.broadcast_to(mask.dense(length, keys), (batch, length, keys))[:, None]
    out = jax.nn.dot_product_attention(
        q.reshape(batch, length, kv_heads * groups, head_dim), k, v, mask=dense,
        is_causal=plain_causal, implementation=implementation,
    )
    return out.reshape(q.shape)


_SPLASH_BLOCK = 128


def splash_supported(length: int, keys: int) -> bool:
    """Whether `splash_attention` takes these lengths (multiples of its 128-row blocks)."""
    return length % _SPLASH_BLOCK == 0 and keys % _SPLASH_BLOCK == 0


def splash_attention(q, k, v, mask: AttentionMask, *, interpret: bool = False) -> jax.Array:
    """The Pallas TPU splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`).

    UNTESTED ON A TPU: this project has had no TPU to run it on. What is tested (on CPU, with the
    kernel in Pallas interpret mode where the installed JAX supports that) is only how the mask
    is translated. The translation: causal with the static offset as a `CausalMask`; key
    validity and packed segments as `SegmentIds` (segment 0 for an invalid slot, so that a
    padding query still sees itself and never an empty row, which the kernel forbids); grouped
    queries through the MQA kernel, vmapped over batch and KV heads; q pre-scaled by
    1/sqrt(head_dim) (the kernel does not scale). Lengths must be multiples of 128.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, length, kv_heads, groups, head_dim = q.shape
    keys = k.shape[1]
    if not mask.is_static or not splash_supported(length, keys):
        raise TailorError(
            f"attention 'splash' needs a static causal offset and lengths that are multiples of "
            f"{_SPLASH_BLOCK} (got {length} queries, {keys} keys); use attention: auto or chunked"
        )
    offset = mask.static_offset
    k_seg = jnp.ones((batch, keys), jnp.int32) if mask.k_segments is None else mask.k_segments.astype(jnp.int32)
    if mask.key_valid is not None:
        k_seg = jnp.where(mask.key_valid, k_seg, 0)
    q_seg = k_seg[:, offset:offset + length]  # query t is key slot offset + t
    causal = splash.MultiHeadMask([splash.CausalMask((length, keys), offset=offset)] * groups)
    blocks = splash.BlockSizes(
        block_q=_SPLASH_BLOCK, block_kv=_SPLASH_BLOCK, block_kv_compute=_SPLASH_BLOCK,
        block_q_dkv=_SPLASH_BLOCK, block_kv_dkv=_SPLASH_BLOCK, block_kv_dkv_compute=_SPLASH_BLOCK,
        block_q_dq=_SPLASH_BLOCK, block_kv_dq=_SPLASH_BLOCK,
    )
    kernel = splash.make_splash_mqa_single_device(causal, block_sizes=blocks, interpret=interpret)

    def one(q_h, k_h, v_h, q_s, k_s):  # q_h [G, T, D], k_h/v_h [S, D]
        return kernel(q_h, k_h, v_h, segment_ids=splash.SegmentIds(q=q_s, kv=k_s))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None, None))  # over KV heads
    per_row = jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0))  # over batch
    qs = jnp.transpose(q * jnp.asarray(head_dim**-0.5, q.dtype), (0, 2, 3, 1, 4))  # [B, Hkv, G, T, D]
    ks, vs = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [B, Hkv, S, D]
    out = per_row(qs, ks, vs, q_seg, k_seg)  # [B, Hkv, G, T, D]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).astype(q.dtype)
