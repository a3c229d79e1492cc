"""Gated linear attention as pure tensor functions: recurrent reference, chunkwise-parallel, one step.

Layout is head-first: q, k, log_a are [B, H, T, K], v is [B, H, T, V], the state S is [B, H, K, V].
The recurrence (per head) is

    S_t = diag(a_t) S_{t-1} + k_t^T v_t,        o_t = (q_t * scale) S_t

with `log_a = log a_t <= 0` given directly (never products of gates). The state is kept
in float32 (float64 when the inputs are float64) whatever the input dtype.

The chunk form is exact only while every per-step log gate is >= MIN_LOG_GATE: within a
sub-chunk of SUB_CHUNK tokens the key-side factors are exp(G_ref - G_j) <= exp(15 * 3) = 3.5e18,
finite in float32 and bfloat16. The model's gate function (`gate_log`) enforces the bound,
so the clamp is part of the model and of the recurrent reference alike.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64
SUB_CHUNK = 16
# Chunk length for a forward pass without autograd on a CPU (perplexity, prefill): the same math with half
# the intra-chunk work (each sub-chunk reference scales the keys of 2 sub-chunks instead of 4); measured
# on the 2-core AVX2 EPYC, T=4096: 18 against 47 ms per layer forward, while training (forward + backward)
# ran alike at 32 and 64 (146-164 ms, 103-108 ms), so training keeps the configured length.
INFERENCE_CHUNK_SIZE = 32
MIN_LOG_GATE = -3.0


def gate_log(pre_activation: torch.Tensor, normalizer: float = 16.0) -> torch.Tensor:
    """Per-step log forget gate: logsigmoid(x) / normalizer, clamped at MIN_LOG_GATE (a >= 0.05)."""
    return (F.logsigmoid(pre_activation.float()) / normalizer).clamp(min=MIN_LOG_GATE)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float64 inputs keep a float64 state; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _initial_state(q: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
    batch, heads, _, key_dim = q.shape
    dtype = state_dtype(q.dtype)
    if state is None:
        return torch.zeros(batch, heads, key_dim, v.shape[-1], device=q.device, dtype=dtype)
    return state.to(dtype)


def gla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k, log_a are [B, H, K], v is [B, H, V]; returns (o [B, H, V], new state)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = _initial_state(q.unsqueeze(2), v.unsqueeze(2), state)
    dtype = s.dtype
    s = s * log_a.to(dtype).exp().unsqueeze(-1) + k.to(dtype).unsqueeze(-1) * v.to(dtype).unsqueeze(-2)
    o = torch.einsum("bhk,bhkv->bhv", q.to(dtype) * scale, s)
    return o.to(v.dtype), s


def gla_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: a token-by-token loop over T. Returns (o [B, H, T, V], final state)."""
    s = _initial_state(q, v, state)
    outputs = []
    for t in range(q.shape[2]):
        o_t, s = gla_step(q[:, :, t], k[:, :, t], v[:, :, t], log_a[:, :, t], s, scale)
        outputs.append(o_t)
    return torch.stack(outputs, dim=2), s


def gla_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    state: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = CHUNK_SIZE,
    sub_chunk: int = SUB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel form (training, prefill, scoring); any T. Returns (o, final state).

    Inside each chunk, G = cumsum(log_a). The intra-chunk scores of a query row in sub-chunk I
    use the first row r of I as reference: q_i exp(G_i - G_r) (exponent <= 0) against
    k_j exp(G_r - G_j) (<= 0 for earlier sub-chunks, <= 15 * 3 inside I, masked beyond I), so
    every product is a plain matmul and no exponent can overflow. All chunks are processed
    at once; only the state hand-over between chunks is a loop.
    """
    if chunk_size % sub_chunk:
        raise ValueError(f"chunk_size {chunk_size} must be a multiple of sub_chunk {sub_chunk}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = _initial_state(q, v, state)
    batch, heads, length, key_dim = q.shape
    value_dim = v.shape[-1]
    pad = (-length) % chunk_size
    if pad:
        # Padded steps have k = v = 0 and log_a = 0: they leave the state untouched.
        q, k, v, log_a = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, log_a))
    n_chunks = (length + pad) // chunk_size
    n_sub = chunk_size // sub_chunk

    def chunked(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, n_chunks, chunk_size, x.shape[-1])

    q, k, v = chunked(q) * scale, chunked(k), chunked(v)
    g = chunked(log_a.to(s.dtype)).cumsum(dim=-2)  # [B, H, N, C, K]

    # Intra-chunk scores, one reference row per sub-chunk.
    g_sub = g.reshape(batch, heads, n_chunks, n_sub, sub_chunk, key_dim)
    g_ref = g_sub[..., :1, :]  # [B, H, N, n, 1, K]
    q_hat = q.reshape(g_sub.shape) * (g_sub - g_ref).exp().to(q.dtype)
    positions = torch.arange(chunk_size, device=q.device)
    sub_end = (torch.arange(n_sub, device=q.device) + 1) * sub_chunk  # exclusive end of each sub-chunk
    visible = positions.unsqueeze(0) < sub_end.unsqueeze(1)  # [n, C]: key j may be seen from sub-chunk I
    key_exponent = g_ref - g.unsqueeze(3)  # [B, H, N, n, C, K]
    key_exponent = torch.where(visible[:, :, None], key_exponent, torch.full_like(key_exponent, -torch.inf))
    k_hat = k.unsqueeze(3) * key_exponent.exp().to(k.dtype)  # [B, H, N, n, C, K]
    scores = torch.matmul(q_hat, k_hat.transpose(-1, -2))  # [B, H, N, n, c, C]
    scores = scores.reshape(batch, heads, n_chunks, chunk_size, chunk_size)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, 0.0)
    out = torch.matmul(scores.to(v.dtype), v)  # [B, H, N, C, V]

    # State hand-over between chunks: S <- S * exp(G_last) + (k * exp(G_last - G))^T v.
    g_last = g[..., -1:, :]  # [B, H, N, 1, K]
    k_decayed = k * (g_last - g).exp().to(k.dtype)
    chunk_kv = torch.matmul(k_decayed.transpose(-1, -2), v).to(s.dtype)  # [B, H, N, K, V]
    chunk_decay = g_last.squeeze(-2).exp().unsqueeze(-1)  # [B, H, N, K, 1]
    states_before = []
    for n in range(n_chunks):
        states_before.append(s)
        s = s * chunk_decay[:, :, n] + chunk_kv[:, :, n]
    prev = torch.stack(states_before, dim=2)  # [B, H, N, K, V]
    q_decayed = q.to(s.dtype) * g.exp()
    out = out.to(s.dtype) + torch.matmul(q_decayed, prev)
    out = out.reshape(batch, heads, n_chunks * chunk_size, value_dim)[:, :, :length]
    return out.to(v.dtype), s


def fla_available() -> bool:
    """Whether flash-linear-attention's GLA chunk kernel imports here (it needs CUDA and Triton to run)."""
    try:
        from fla.ops.gla import chunk_gla  # noqa: F401
    except Exception:  # noqa: BLE001 - missing package, missing Triton, incompatible torch: all mean "no"
        return False
    return True


@functools.lru_cache(maxsize=1)
def _fla_has_head_first() -> bool:
    import inspect

    from fla.ops.gla import chunk_gla

    return "head_first" in inspect.signature(chunk_gla).parameters


def gla_chunk_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    state: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk form through flash-linear-attention's `chunk_gla` (CUDA tensors only); same math as gla_chunk.

    fla's conventions, checked against ours: tensors are [B, T, H, K] (ours are head-first, so only
    transposes differ); `g` is the per-step natural-log forget gate (fla forms the cumulative sums);
    q is scaled by K^-1/2 by default; the state is [B, H, K, V] in float32 and must be float32 on input.
    Older fla releases default to head-first tensors, so `head_first=False` is passed where it exists.
    """
    from fla.ops.gla import chunk_gla

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    extra = {"head_first": False} if _fla_has_head_first() else {}
    o, final = chunk_gla(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        log_a.transpose(1, 2).float(),
        scale=scale,
        initial_state=None if state is None else state.float(),
        output_final_state=True,
        **extra,
    )
    return o.transpose(1, 2).to(v.dtype), final


def gla_quadratic(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_a: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Naive masked quadratic form from a zero state (a second reference; O(T^2 K) memory).

    o_i = sum_{j <= i} (sum_c q_ic k_jc exp(G_ic - G_jc)) v_j with G = cumsum(log_a) over the
    whole sequence; the exponent difference is formed before exp, so it never overflows.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = state_dtype(q.dtype)
    g = log_a.to(dtype).cumsum(dim=2)
    length = q.shape[2]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    decay = (g.unsqueeze(3) - g.unsqueeze(2)).masked_fill(~causal[:, :, None], -torch.inf).exp()  # [B,H,T,T,K]
    scores = torch.einsum("bhik,bhjk,bhijk->bhij", q.to(dtype) * scale, k.to(dtype), decay)
    return torch.matmul(scores, v.to(dtype)).to(v.dtype)
