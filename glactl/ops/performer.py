"""FAVOR+ causal linear attention (Performer, docs/design.md §3.4) as pure tensor functions.

Layout is head-first: q, k are [B, H, T, D], v is [B, H, T, V], the random projection W is
[H, m, D] (m features per head). With q, k scaled by D^-1/4 the positive random features

    phi(x) = m^-1/2 exp(W x - |x|^2 / 2)

give phi(q) . phi(k) ~ exp(q . k / sqrt(D)) in expectation, and the causal output is

    S_t = S_{t-1} + phi(k_t)^T v_t,   z_t = z_{t-1} + phi(k_t),   y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps).

Stabilisers. Any factor common to the numerator and the denominator of y_t cancels, so
(a) m^-1/2 is dropped, (b) each query's features are divided by their own largest value
(per-query max), and (c) the key features are kept relative to M_t, the running maximum of
the key log-features over all features and all tokens up to and including t (per sequence
and head). The state stores S and z relative to M of its last token and is rescaled by
exp(M_old - M_new) <= 1 when the maximum grows. M_t depends on tokens <= t only, so nothing
leaks from the future, and every form (one call, pieces, steps) uses the same M_t for the
same token: the outputs agree in exact arithmetic, eps included. eps = EPS is therefore
relative to stabilised features whose largest entry (per query, and over the keys seen so
far) is exactly 1; the stabilisers carry no gradient.

The chunk form never materialises S per token: inside a chunk the (query, key) weights are
(q^_i . k^_j) exp(M_j - M_i) with k^_j = exp(lk_j - M_j), every factor <= 1 since M rises
along the sequence; between chunks a prefix sum of per-chunk S carries the rest. The
denominator rides along as an extra value column of ones. The state is
{"kv": S [B, H, m, V], "z": [B, H, m], "key_max": M [B, H]}, float32 (float64 for float64
inputs); a fresh state has M = -inf (no key seen, S = z = 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from glactl.ops.gla import state_dtype

CHUNK_SIZE = 64
EPS = 1e-6

State = dict[str, torch.Tensor]


def orthogonal_random_features(
    n_heads: int,
    n_features: int,
    head_dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """W [H, m, D] on the CPU: orthogonal D x D blocks (Haar, via QR) with chi_D distributed row norms."""
    n_blocks = math.ceil(n_features / head_dim)
    gaussian = torch.randn(
        n_heads, n_blocks, head_dim, head_dim, generator=generator, dtype=torch.float64, device="cpu"
    )
    q, r = torch.linalg.qr(gaussian)
    # Sign fix on diag(R) makes Q Haar-distributed rather than biased by the QR convention.
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    rows = q.transpose(-1, -2).reshape(n_heads, n_blocks * head_dim, head_dim)[:, :n_features]
    norms = torch.randn(n_heads, n_features, head_dim, generator=generator, dtype=torch.float64, device="cpu").norm(
        dim=-1
    )
    return (rows * norms.unsqueeze(-1)).to(dtype)


def init_state(
    batch_size: int,
    n_heads: int,
    n_features: int,
    value_dim: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> State:
    """An empty state: S = z = 0 and a key maximum of -inf (nothing seen yet)."""
    dtype = state_dtype(dtype)
    return {
        "kv": torch.zeros(batch_size, n_heads, n_features, value_dim, device=device, dtype=dtype),
        "z": torch.zeros(batch_size, n_heads, n_features, device=device, dtype=dtype),
        "key_max": torch.full((batch_size, n_heads), -math.inf, device=device, dtype=dtype),
    }


def _log_features(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """W x - |x|^2 / 2 for x [B, H, *, D] already scaled by D^-1/4; W [H, m, D] -> [B, H, *, m]."""
    lead = x.shape[:2]
    flat = x.reshape(*lead, -1, x.shape[-1])
    # Exponents must not be rounded to bfloat16 (a 0.05 error in a logit is 5% in a feature).
    with torch.autocast(x.device.type, enabled=False):
        logits = torch.matmul(flat, proj.transpose(-1, -2)) - 0.5 * flat.square().sum(-1, keepdim=True)
    return logits.reshape(*x.shape[:-1], proj.shape[-2])


def query_features(q: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Positive query features divided by their own maximum (largest entry exactly 1)."""
    logits = _log_features(q * q.shape[-1] ** -0.25, proj)
    return (logits - logits.detach().amax(dim=-1, keepdim=True)).exp()


def key_log_features(k: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Key log-features W k - |k|^2 / 2 (k scaled by D^-1/4), not yet stabilised."""
    return _log_features(k * k.shape[-1] ** -0.25, proj)


def _prepare(q, k, v, proj, state):
    """Cast to the state dtype and fill in a fresh state."""
    dtype = state_dtype(q.dtype)
    if state is None:
        batch, heads = q.shape[:2]
        state = init_state(batch, heads, proj.shape[-2], v.shape[-1], q.device, dtype)
    state = {name: t.to(dtype) for name, t in state.items()}
    return q.to(dtype), k.to(dtype), v.to(dtype), proj.to(dtype), state


def performer_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, state: State | None = None, eps: float = EPS
) -> tuple[torch.Tensor, State]:
    """One token: q, k [B, H, D], v [B, H, V] -> (y [B, H, V], new state)."""
    out_dtype = v.dtype
    q, k, v, proj, state = _prepare(q, k, v, proj, state)
    fq = query_features(q, proj)  # [B, H, m]
    lk = key_log_features(k, proj)
    new_max = torch.maximum(state["key_max"], lk.detach().amax(dim=-1))
    fk = (lk - new_max.unsqueeze(-1)).exp()
    decay = (state["key_max"] - new_max).exp()  # exp(-inf) = 0 for a fresh state, whose S, z are 0
    kv = state["kv"] * decay[..., None, None] + fk.unsqueeze(-1) * v.unsqueeze(-2)
    z = state["z"] * decay.unsqueeze(-1) + fk
    num = torch.einsum("bhm,bhmv->bhv", fq, kv)
    den = (fq * z).sum(-1, keepdim=True)
    return (num / (den + eps)).to(out_dtype), {"kv": kv, "z": z, "key_max": new_max}


def performer_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, proj: torch.Tensor, state: State | None = None, eps: float = EPS
) -> tuple[torch.Tensor, State]:
    """The reference: a token-by-token loop of `performer_step` over T. Returns (y [B, H, T, V], state)."""
    outputs = []
    for t in range(q.shape[2]):
        y, state = performer_step(q[:, :, t], k[:, :, t], v[:, :, t], proj, state, eps)
        outputs.append(y)
    return torch.stack(outputs, dim=2), state


def performer_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    proj: torch.Tensor,
    state: State | None = None,
    eps: float = EPS,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, State]:
    """Chunkwise-parallel causal form (training, prefill, scoring); any T. Returns (y [B, H, T, V], state)."""
    out_dtype = v.dtype
    q, k, v, proj, state = _prepare(q, k, v, proj, state)
    batch, heads, length, _ = q.shape
    value_dim = v.shape[-1]
    fq = query_features(q, proj)  # [B, H, T, m]
    lk = key_log_features(k, proj)
    # Running key maximum up to and including each token (detached: it cancels in the ratio).
    running = torch.maximum(lk.detach().amax(dim=-1).cummax(dim=-1).values, state["key_max"].unsqueeze(-1))
    fk = (lk - running.unsqueeze(-1)).exp()  # <= 1
    vz = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # denominator as an extra value column

    pad = (-length) % chunk_size
    if pad:
        # Padded tokens have zero features (no effect) and repeat the last maximum.
        fq, fk, vz = (F.pad(x, (0, 0, 0, pad)) for x in (fq, fk, vz))
        running = torch.cat([running, running[..., -1:].expand(batch, heads, pad)], dim=-1)
    n_chunks = (length + pad) // chunk_size

    def chunked(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, heads, n_chunks, chunk_size, *x.shape[3:])

    fq, fk, vz, m_tok = chunked(fq), chunked(fk), chunked(vz), chunked(running)  # m_tok [B, H, N, C]

    # Intra-chunk: weight_ij = (fq_i . fk_j) exp(M_j - M_i), j <= i (exponent <= 0: M rises).
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    exponent = m_tok.unsqueeze(-2) - m_tok.unsqueeze(-1)  # [B, H, N, C(i), C(j)] = M_j - M_i
    exponent = exponent.masked_fill(~causal, -math.inf)
    weights = torch.matmul(fq, fk.transpose(-1, -2)) * exponent.exp()
    out = torch.matmul(weights, vz)  # [B, H, N, C, V + 1]

    # Per-chunk sums relative to each chunk's last maximum, then the prefix sum over chunks.
    m_end = m_tok[..., -1]  # [B, H, N]
    fk_end = fk * (m_tok - m_end.unsqueeze(-1)).exp().unsqueeze(-1)
    chunk_kv = torch.matmul(fk_end.transpose(-1, -2), vz)  # [B, H, N, m, V + 1]
    s = torch.cat([state["kv"], state["z"].unsqueeze(-1)], dim=-1)  # [B, H, m, V + 1]
    m_prev = state["key_max"]
    states_before, max_before = [], []
    for n in range(n_chunks):
        states_before.append(s)
        max_before.append(m_prev)
        s = s * (m_prev - m_end[..., n]).exp()[..., None, None] + chunk_kv[:, :, n]
        m_prev = m_end[..., n]
    prev = torch.stack(states_before, dim=2)  # [B, H, N, m, V + 1]
    prev_max = torch.stack(max_before, dim=2)  # [B, H, N]
    inter_scale = (prev_max.unsqueeze(-1) - m_tok).exp().unsqueeze(-1)  # [B, H, N, C, 1], <= 1
    out = out + torch.matmul(fq, prev) * inter_scale

    out = out.reshape(batch, heads, n_chunks * chunk_size, value_dim + 1)[:, :, :length]
    y = out[..., :value_dim] / (out[..., value_dim:] + eps)
    new_state = {"kv": s[..., :value_dim].contiguous(), "z": s[..., value_dim].contiguous(), "key_max": m_prev}
    return y.to(out_dtype), new_state
