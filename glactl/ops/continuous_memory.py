"""The continuous long-term memory of the infinity-former (docs/design.md §3.5) as pure tensor functions.

A memory is a signal x(t) on [0, 1] written as N Gaussian radial basis functions,
x(t) = sum_j B_j psi_j(t), with psi_j(t) = N(t; mu_j, sigma_j^2) (half of the basis with
sigma_j = 0.01, half with 0.05, centres evenly spread on [0, 1]). It is fitted by ridge
regression to L signal values X [L, d] at positions t_l:

    F = [psi_j(t_l)]  (N x L),      B = (F F^T + lambda I)^-1 F X      (i.e. B^T = X^T F^T (F F^T + lambda I)^-1)

A query attends to it with a Gaussian density N(t; mu, sigma^2); since the basis functions
are Gaussian densities the integral is closed-form:

    int N(t; mu, sigma^2) x(t) dt = sum_j N(mu; mu_j, sigma^2 + sigma_j^2) B_j.

Memory update at a segment boundary (a block refit): the old signal is sampled at M points
u_i = (i + 1/2) / M, squeezed to tau u_i in [0, tau], and refitted together with the W_s
states that left the short-term memory, placed at tau + (1 - tau)(l + 1/2) / W_s in
[tau, 1]. Everything is linear, so the update is two fixed matrices,
B_new = A_old B_old + A_new X, precomputed once in float64. The first fit (an empty
memory) spreads the leaving states over the whole of [0, 1]: B = A_first X. Because the
fit is linear in X, fitting the states and projecting them to keys/values afterwards equals
fitting the keys/values directly; the mixer does the latter.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

NARROW_WIDTH = 0.01
WIDE_WIDTH = 0.05


class MemoryMatrices(NamedTuple):
    """The fixed float64 matrices of the memory: basis centres/widths [N] and the three fit maps."""

    centers: torch.Tensor  # [N]
    widths: torch.Tensor  # [N]
    first: torch.Tensor  # [N, W_s]: empty memory -> fit of the leaving states on [0, 1]
    old: torch.Tensor  # [N, N]: old coefficients -> their share of the refit
    new: torch.Tensor  # [N, W_s]: leaving states -> their share of the refit


def rbf_basis(n_basis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres and widths (float64, CPU) of N Gaussian RBFs: half of width 0.01, half of width 0.05, on [0, 1]."""
    narrow = n_basis // 2
    wide = n_basis - narrow
    centers = torch.cat([_spread(narrow), _spread(wide)])
    widths = torch.cat(
        [
            torch.full((narrow,), NARROW_WIDTH, dtype=torch.float64, device="cpu"),
            torch.full((wide,), WIDE_WIDTH, dtype=torch.float64, device="cpu"),
        ]
    )
    return centers, widths


def _spread(n: int) -> torch.Tensor:
    """n evenly spread centres covering [0, 1] (the midpoint for n = 1)."""
    if n == 1:
        return torch.full((1,), 0.5, dtype=torch.float64, device="cpu")
    return torch.linspace(0.0, 1.0, n, dtype=torch.float64, device="cpu")


def rbf_values(t: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """psi_j(t_l) = N(t_l; mu_j, sigma_j^2) as an [L, N] matrix."""
    z = (t.unsqueeze(-1) - centers) / widths
    return torch.exp(-0.5 * z.square()) / (widths * math.sqrt(2 * math.pi))


def ridge_fit_matrix(t: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor, ridge: float) -> torch.Tensor:
    """(F F^T + lambda I)^-1 F [N, L] for positions t [L]: B = this @ X fits X [L, d] by ridge regression."""
    f = rbf_values(t, centers, widths).T  # [N, L]
    gram = f @ f.T + ridge * torch.eye(f.shape[0], dtype=f.dtype, device=f.device)
    return torch.linalg.solve(gram, f)


def midpoints(n: int) -> torch.Tensor:
    """(i + 1/2) / n for i < n: n evenly spread points inside [0, 1] (float64, CPU)."""
    return (torch.arange(n, dtype=torch.float64, device="cpu") + 0.5) / n


@lru_cache(maxsize=16)
def memory_matrices(n_basis: int, n_samples: int, segment: int, tau: float, ridge: float) -> MemoryMatrices:
    """The fixed fit matrices of a memory configuration (float64, CPU; computed once per configuration)."""
    centers, widths = rbf_basis(n_basis)
    new_t = midpoints(segment)
    first = ridge_fit_matrix(new_t, centers, widths, ridge)
    samples = midpoints(n_samples)
    refit = ridge_fit_matrix(torch.cat([tau * samples, tau + (1.0 - tau) * new_t]), centers, widths, ridge)
    old = refit[:, :n_samples] @ rbf_values(samples, centers, widths)  # sample the old signal, then refit
    return MemoryMatrices(centers, widths, first, old, refit[:, n_samples:])


@lru_cache(maxsize=64)
def memory_matrices_on(
    n_basis: int, n_samples: int, segment: int, tau: float, ridge: float, device: torch.device, dtype: torch.dtype
) -> MemoryMatrices:
    """`memory_matrices` cast once to a device and dtype (no copy per call, no host sync per step)."""
    matrices = memory_matrices(n_basis, n_samples, segment, tau, ridge)
    return MemoryMatrices(*(m.to(device=device, dtype=dtype) for m in matrices))


def refit_memory(memory: torch.Tensor, leaving: torch.Tensor, matrices: MemoryMatrices, empty: bool) -> torch.Tensor:
    """New coefficients [..., N, D] from the old ones and the leaving states [..., W_s, D] (detached).

    `matrices` must already be in the memory's dtype and device (`memory_matrices_on`).
    """
    leaving = leaving.detach().to(memory.dtype)
    with torch.autocast(memory.device.type, enabled=False):  # the memory keeps its own dtype
        if empty:
            return torch.matmul(matrices.first, leaving)
        return torch.matmul(matrices.old, memory.detach()) + torch.matmul(matrices.new, leaving)


def evaluate_memory(memory: torch.Tensor, t: torch.Tensor, matrices: MemoryMatrices) -> torch.Tensor:
    """The memory signal x(t) = sum_j B_j psi_j(t) at positions t [L]: [..., L, D]."""
    psi = rbf_values(t.to(matrices.centers), matrices.centers, matrices.widths).to(memory.dtype)
    return torch.matmul(psi, memory)


def continuous_attention(
    q: torch.Tensor,
    mem_k: torch.Tensor,
    mem_v: torch.Tensor,
    w_mu: torch.Tensor,
    w_sigma: torch.Tensor,
    centers: torch.Tensor,
    widths: torch.Tensor,
) -> torch.Tensor:
    """Gaussian continuous attention of q [B, H, T, D] over a memory (keys/values [B, H, N, D]); [B, H, T, D].

    s = q . K_j / sqrt(D) (scores against the N basis keys), mu = sigmoid(w_mu . s),
    sigma^2 = softplus(w_sigma . s) (w_mu, w_sigma [H, N]); the result is
    sum_j N(mu; mu_j, sigma^2 + sigma_j^2) V_j. centers/widths must be in q's dtype and device.
    """
    scores = torch.matmul(q, mem_k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, H, T, N]
    mu = torch.sigmoid(torch.einsum("bhtn,hn->bht", scores, w_mu.to(q.dtype)))
    var = F.softplus(torch.einsum("bhtn,hn->bht", scores, w_sigma.to(q.dtype)))
    total = var.unsqueeze(-1) + widths.square()  # [B, H, T, N]
    density = torch.exp(-0.5 * (mu.unsqueeze(-1) - centers).square() / total) / torch.sqrt(2 * math.pi * total)
    return torch.matmul(density, mem_v)
