"""A small convolutional network for populations: ``model=cnn`` (``surfacekit.models.CNN``)."""

from __future__ import annotations

from torch import nn

ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "linear": nn.Identity}
POOLS = ("max", "avg", "none")


def activation_module(name: str) -> nn.Module:
    """The ``torch.nn`` module of an activation name (relu, tanh, sigmoid, linear).

    Raises:
        ValueError: an unknown name.
    """
    if name not in ACTIVATION_MODULES:
        raise ValueError(f"model.activation={name!r}; choose one of {sorted(ACTIVATION_MODULES)}")
    return ACTIVATION_MODULES[name]()


class CNN(nn.Module):
    """``depth`` blocks of [conv kxk (``width`` channels, padding k // 2) -> batch norm -> activation ->
    2 x 2 pooling], global average pooling, a linear layer to ``num_outputs``.

    Pooling halves the map while it is at least 2 x 2 (8 x 8 digits: 8, 4, 2). With batch norm the
    convolutions have no bias (the norm's shift replaces it). Parameter names: ``blocks.{i}.0.weight``
    (conv [width, in, k, k]), ``blocks.{i}.1.weight`` / ``bias`` (norm), ``head.weight`` / ``bias``.

    Args:
        in_shape: (channels, height, width) of one example (e.g. (1, 8, 8)).
        num_outputs: classes or regression outputs.
        width: channels of every convolution (the swept quantity, like an MLP's width).
        depth: number of blocks; kernel_size: odd kernel size; batch_norm; activation; pool: max, avg or none.

    Raises:
        ValueError: an unknown activation or pool, an even kernel size, or a non-positive size.
    """

    def __init__(self, in_shape: tuple[int, ...], num_outputs: int, width: int = 8, depth: int = 2,
                 kernel_size: int = 3, batch_norm: bool = True, activation: str = "relu", pool: str = "max"):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"a CNN takes images (channels, height, width); the data give examples of shape {in_shape}")
        if pool not in POOLS:
            raise ValueError(f"model.pool={pool!r}; choose one of {list(POOLS)}")
        if kernel_size % 2 == 0 or min(width, depth, kernel_size) < 1:
            raise ValueError(f"model.kernel_size={kernel_size} must be odd and width, depth >= 1")
        blocks, channels, size = [], in_shape[0], min(in_shape[1:])
        for _ in range(depth):
            layers = [nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(width)] if batch_norm else []
            layers.append(activation_module(activation))
            if pool != "none" and size >= 2:
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
                size //= 2
            blocks.append(nn.Sequential(*layers))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=(2, 3)))
