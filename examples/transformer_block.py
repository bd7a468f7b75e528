"""The Hessian of a transformer block on synthetic sequences: dict batches, a custom loss, per-block spectra.

    python examples/transformer_block.py

A ``torch.nn.TransformerEncoderLayer`` (self-attention, layer norm, feed-forward, dropout) learns to
map random token sequences to their running mean. Batches are dicts; the loss is a callable on the
model's output and the batch, returning one loss per sequence. The objective runs the block in
evaluation mode (dropout off) with attention's math kernel, whose second derivatives exist. Runs in
seconds on a CPU.
"""

import torch
from torch import nn

import surfacekit
from surfacekit import curvature


def synthetic_sequences(n: int = 96, length: int = 6, dim: int = 8, seed: int = 0):
    """Batches {"tokens": [b, length, dim], "target": running mean of the tokens} of 32 sequences."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, length, dim, generator=gen)
    target = tokens.cumsum(dim=1) / torch.arange(1, length + 1).reshape(1, -1, 1)
    return [{"tokens": tokens[i:i + 32], "target": target[i:i + 32]} for i in range(0, n, 32)]


def sequence_loss(output: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean squared error of each sequence [b]."""
    return (output - batch["target"]).pow(2).mean(dim=(1, 2))


def main() -> None:
    torch.manual_seed(0)
    batches = synthetic_sequences()
    block = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1, batch_first=True)
    optimizer = torch.optim.Adam(block.parameters(), lr=0.01)
    for _ in range(30):
        for batch in batches:
            optimizer.zero_grad()
            sequence_loss(block.train()(batch["tokens"]), batch).mean().backward()
            optimizer.step()

    objective = surfacekit.objective_from_module(block, sequence_loss, batches, inputs="tokens")
    top = curvature.extreme_eigenvalues(objective, objective.theta, 3, "largest")
    bottom = curvature.extreme_eigenvalues(objective, objective.theta, 3, "smallest")
    print(f"P = {objective.theta.numel()}, loss {float(objective(objective.theta)):.4f}; top-3 "
          f"{[round(float(v), 4) for v in top.eigenvalues]}, bottom-3 {[round(float(v), 4) for v in bottom.eigenvalues]}")
    attention = objective.select("self_attn")  # the attention weights alone, the rest held fixed
    print(f"attention block: P = {attention.theta.numel()}, index {curvature.index(attention, attention.theta).count}")
    groups = {"attention": "self_attn", "feed-forward": ["linear1", "linear2"], "layer norms": ["norm1", "norm2"]}
    table = surfacekit.layer_spectra(block, sequence_loss, batches, groups=groups, inputs="tokens", trace_probes=30)
    print(table[["group", "num_params", "lambda_max", "lambda_min", "trace", "index_count"]].to_string(index=False))


if __name__ == "__main__":
    main()
