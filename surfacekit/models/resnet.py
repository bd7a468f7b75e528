"""A small residual network for populations: ``model=resnet`` (``surfacekit.models.ResNet``)."""

from __future__ import annotations

from torch import nn

from surfacekit.models.cnn import activation_module


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with batch norm, added to the input (He et al. 2016, Fig. 2): out =
    act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x)), the shortcut a strided 1 x 1 convolution with
    batch norm where the shape changes (option B), else the identity."""

    def __init__(self, channels_in: int, channels: int, stride: int, batch_norm: bool, activation: str):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn2 = norm(channels)
        self.act1, self.act2 = activation_module(activation), activation_module(activation)
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride=stride, bias=not batch_norm),
                                          norm(channels))

    def forward(self, x):
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet(nn.Module):
    """A stem (3 x 3 convolution, batch norm, activation), ``depth`` stages of ``blocks`` basic blocks,
    global average pooling and a linear layer (He et al. 2016, the CIFAR variant, Sec. 4.2).

    Stage i has ``width * 2**i`` channels; its first block has stride 2 from the second stage on.

    Args:
        in_shape: (channels, height, width) of one example; num_outputs: classes or regression outputs;
        width: channels of the stem and the first stage (the swept quantity); depth: stages;
        blocks: basic blocks per stage; batch_norm; activation.

    Raises:
        ValueError: inputs that are not images, an unknown activation, or a non-positive size.
    """

    def __init__(self, in_shape: tuple[int, ...], num_outputs: int, width: int = 8, depth: int = 2, blocks: int = 1,
                 batch_norm: bool = True, activation: str = "relu"):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"a ResNet takes images (channels, height, width); the data give examples of shape {in_shape}")
        if min(width, depth, blocks) < 1:
            raise ValueError(f"model.width, depth and blocks must be >= 1, got {width}, {depth}, {blocks}")
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1, bias=not batch_norm),
                                  nn.BatchNorm2d(width) if batch_norm else nn.Identity(), activation_module(activation))
        stages, channels = [], width
        for i in range(depth):
            out = width * 2**i
            stage = [BasicBlock(channels if j == 0 else out, out, 2 if (i > 0 and j == 0) else 1, batch_norm, activation)
                     for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_outputs)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))
