"""The Hessian of a small CNN with batch norm, through a DataLoader: spectrum, index, per-layer table.

    python examples/cnn_spectrum.py

Synthetic 1x8x8 images in 4 classes; the network trains for a few epochs in train mode (its running
statistics move as usual), then ``surfacekit.objective_from_module`` gives its full-data loss as
``loss_fn(theta)`` with batch norm in evaluation mode. The loader's last batch is uneven (200 = 3 x 64
+ 8); every batch counts by its size. The module itself is never modified. Runs in seconds on a CPU.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surfacekit
from surfacekit import curvature


def synthetic_images(n: int = 200, seed: int = 0):
    """Images x [n, 1, 8, 8] and labels y [n] in 4 classes (the sign of the mean of two image halves)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = (x[:, 0, :4].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 4:].mean(dim=(1, 2)) > 0).long()
    return x, y


def main() -> None:
    torch.manual_seed(0)
    x, y = synthetic_images()
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    for _ in range(20):
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(model.train()(xb), yb).backward()
            optimizer.step()

    # Five lines to a spectrum:
    objective = surfacekit.objective_from_module(model, "cross_entropy", loader)  # float64, eval-mode batch norm
    top = curvature.extreme_eigenvalues(objective, objective.theta, 5, "largest")
    bottom = curvature.extreme_eigenvalues(objective, objective.theta, 1, "smallest")
    idx = curvature.index(objective, objective.theta)
    trace = curvature.hutchinson_trace(objective, objective.theta, num_probes=50)
    print(f"P = {objective.theta.numel()}, loss {float(objective(objective.theta)):.4f} over "
          f"{objective.info['num_examples']} examples in {objective.info['num_batches']} batches")
    print(f"top-5 eigenvalues {[round(float(v), 4) for v in top.eigenvalues]}, lambda_min "
          f"{float(bottom.eigenvalues[0]):.4g}, index {idx.count} ({idx.method}, threshold {idx.threshold:.2g}), "
          f"trace {trace.estimate:.4g} +- {trace.stderr:.2g}")
    print("\nper layer (diagonal blocks of the Hessian):")
    table = surfacekit.layer_spectra(model, "cross_entropy", loader, trace_probes=50)
    print(table[["group", "num_params", "lambda_max", "lambda_min", "trace", "index_count"]].to_string(index=False))


if __name__ == "__main__":
    main()
