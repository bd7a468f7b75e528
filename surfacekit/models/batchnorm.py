"""Batch normalization over a population: batch moments, exact pooled moments, running statistics.

Tensors carry the population axis first and the batch axis second: pre-activations z [K, B, C],
statistics [K, C]. Conventions follow ``torch.nn.BatchNorm1d`` (Ioffe and Szegedy 2015):
normalization (z - mean) / sqrt(var + eps) with eps = 1e-5, the biased batch variance in training,
and running statistics updated as r <- (1 - momentum) r + momentum * s with momentum 0.1, where s
is the batch mean, or the *unbiased* batch variance (divisor B - 1).
"""

from __future__ import annotations

import torch

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def batch_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance (divisor B) over the batch axis of z [K, B, C]: two tensors [K, C]."""
    return z.mean(dim=1), z.var(dim=1, unbiased=False)


def normalize(z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, scale: torch.Tensor,
              shift: torch.Tensor) -> torch.Tensor:
    """scale * (z - mean) / sqrt(var + eps) + shift for z [K, B, C] and mean, var, scale, shift [K, C]."""
    z_hat = (z - mean.unsqueeze(1)) / torch.sqrt(var.unsqueeze(1) + BN_EPS)
    return z_hat * scale.unsqueeze(1) + shift.unsqueeze(1)


def pooled_moments(counts: list[int], means: list[torch.Tensor], sums_sq: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance [K, C] of a set split into chunks, from each chunk's size n_c, mean
    m_c [K, C] and centred sum of squares M_c = sum (z - m_c)^2 [K, C].

    mean = sum n_c m_c / N and var = (sum M_c + sum n_c (m_c - mean)^2) / N (the pairwise update of
    Chan, Golub and LeVeque 1979): algebraically the statistics of the unsplit set, without the
    cancellation of E[z^2] - E[z]^2. Differentiable.
    """
    total = float(sum(counts))
    mean = sum(n * m for n, m in zip(counts, means)) / total
    spread = sum(s + n * (m - mean).pow(2) for n, m, s in zip(counts, means, sums_sq))
    return mean, spread / total


@torch.no_grad()
def update_running(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                   batch_size: int, momentum: float = BN_MOMENTUM) -> None:
    """In place, torch's running-statistics update from one batch's mean and biased variance [K, C].

    Raises:
        ValueError: batch_size < 2 (the unbiased variance is undefined; torch raises as well).
    """
    if batch_size < 2:
        raise ValueError(f"batch norm needs at least 2 examples per batch to update running statistics, got {batch_size}")
    running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
    running_var.mul_(1.0 - momentum).add_(var * (batch_size / (batch_size - 1)), alpha=momentum)
