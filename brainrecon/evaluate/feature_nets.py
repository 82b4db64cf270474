"""Feature networks of the reconstruction metrics, in plain torch, loadable from standard weight files.

torchvision cannot be installed next to transformers/diffusers here (docs/dependencies.md),
so the four backbones the metrics need are defined below from their published architectures,
with module names chosen so that ``state_dict()`` keys equal torchvision's. The standard
weight files therefore load with ``load_state_dict(strict=True)``:

=================  ====================================================  =====================
network            file names looked for in ``weights_dir``              reference node
=================  ====================================================  =====================
alexnet            alexnet-owt-7be5be79 (AlexNet_Weights.IMAGENET1K_V1)  features.4, features.11
inception_v3       inception_v3_google-0cc3c7bd (DEFAULT = V1)           avgpool (2048)
efficientnet_b1    efficientnet_b1-c27df63c (DEFAULT = V2), else          avgpool (1280)
                   efficientnet_b1_rwightman-bac287d4 (V1)
swav               swav_800ep_pretrain (torch.hub facebookresearch/swav)  avgpool (2048)
resnet50           resnet50-0676ba61 (V1), resnet50-11ad3fa6 (V2)        avgpool (2048)
=================  ====================================================  =====================

each with extension ``.pth`` / ``.pth.tar`` (read with ``torch.load(weights_only=True)``) or
``.safetensors``. Missing weights raise ``WeightsUnavailable``; the metric layer turns that
into a ``MetricUnavailable`` result rather than a number.

Architectures (all inference-only; dropout / stochastic depth are identity in eval mode):
AlexNet as in torchvision ("one weird trick" variant, 64-192-384-256-256 channels);
ResNet-50 v1.5 (stride on the 3x3 conv of each bottleneck); Inception v3 with BatchNorm
eps 1e-3 and ``transform_input=True`` (torchvision sets it whenever pretrained weights are
loaded, re-normalising ImageNet-normalised input to the (x - 0.5) / 0.5 the Google weights
expect); EfficientNet-B1 (width 1.0, depth 1.1, SiLU, squeeze-excitation with
input_channels // 4 squeeze width, BatchNorm eps 1e-5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.errors import EvaluationError


@dataclass(frozen=True)
class MetricUnavailable:
    """A metric that could not be computed, with the reason; reported, never replaced by a number."""

    metric: str
    reason: str
    available = False

    def __str__(self) -> str:
        return f"not available ({self.reason})"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "available": False, "reason": self.reason}


class WeightsUnavailable(EvaluationError):
    """The weight file a feature network needs is not in the given directory (or cannot be read)."""


# --------------------------------------------------------------------------- AlexNet


class AlexNet(nn.Module):
    """torchvision's AlexNet: ``features`` (conv stack), ``avgpool`` (6x6), ``classifier`` (MLP)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        # indices matter: they are the state-dict keys and the reference's node names
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),  # 0, 1
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),  # 3, 4 <- AlexNet(2)
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),  # 6, 7
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),  # 8, 9
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),  # 10, 11 <- AlexNet(5)
            nn.MaxPool2d(kernel_size=3, stride=2),  # 12
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def feature_maps(self, x: torch.Tensor, layers=("features.4", "features.11")) -> dict[str, torch.Tensor]:
        """Outputs of the named ``features.N`` modules (the reference's feature-extractor nodes)."""
        wanted = {int(name.split(".")[1]): name for name in layers}
        if any(not name.startswith("features.") for name in layers) or max(wanted) >= len(self.features):
            raise EvaluationError(f"AlexNet layers must be features.0 .. features.{len(self.features) - 1}, "
                                  f"got {list(layers)}")
        out = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                out[wanted[index]] = x.clone()  # later in-place ReLUs must not alter what we return
            if len(out) == len(wanted):
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------- ResNet-50


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, "v1.5") -> 1x1 expand x4, plus identity or projection."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's names (conv1, bn1, layer1..layer4, fc); SwAV uses this backbone."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], 1):
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(channels, width, stride if block == 0 else 1))
                channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def avgpool_features(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's ``avgpool`` node, flattened: (n, 2048)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool_features(x))


# --------------------------------------------------------------------------- Inception v3


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU, as keys ``<name>.conv`` / ``<name>.bn``."""

    def __init__(self, in_channels: int, out_channels: int, **conv_args):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_args)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # 3x3 average pool, stride 1, zero padding counted in the average (PyTorch's default)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """Factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        row, col = {"kernel_size": (1, 7), "padding": (0, 3)}, {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        double = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(double)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_2(self.branch7x7x3_1(x))
        seven = self.branch7x7x3_4(self.branch7x7x3_3(seven))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank: 3x3 branches split into parallel 1x3 and 3x1 outputs."""

    def __init__(self, in_channels: int):
        super().__init__()
        row, col = {"kernel_size": (1, 3), "padding": (0, 1)}, {"kernel_size": (3, 1), "padding": (1, 0)}
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, **row)
        self.branch3x3_2b = BasicConv2d(384, 384, **col)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, **row)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, **col)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(single), self.branch3x3_2b(single)], 1),
            torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier; only used in training, kept so the standard file loads strictly."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class InceptionV3(nn.Module):
    """Inception v3 with torchvision's module names (Conv2d_1a_3x3 ... Mixed_7c, AuxLogits, fc)."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = True):
        super().__init__()
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(2048, num_classes)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # ImageNet-normalised input -> (pixel - 0.5) / 0.5, the scaling the Google weights were trained with
        if not self.transform_input:
            return x
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return torch.cat([x[:, c:c + 1] * (std[c] / 0.5) + (mean[c] - 0.5) / 0.5 for c in range(3)], 1)

    def avgpool_features(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's ``avgpool`` node, flattened: (n, 2048)."""
        x = self._transform_input(x)
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.avgpool_features(x)))


# --------------------------------------------------------------------------- EfficientNet-B1


def _make_divisible(value: float, divisor: int = 8) -> int:
    # the EfficientNet/MobileNet channel rounding: nearest multiple, never more than 10% below
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Sequential):
    """conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> optional SiLU; keys ``.0`` / ``.1``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 activation: bool = True):
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups,
                            bias=False),
                  nn.BatchNorm2d(out_channels)]
        if activation:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating: global average -> fc1 -> SiLU -> fc2 -> sigmoid -> scale (1x1 convs with bias)."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return scale * x


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> squeeze-excitation -> 1x1 project (+ input)."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, in_channels: int, out_channels: int):
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        expanded = _make_divisible(in_channels * expand_ratio)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1))
        layers += [ConvNormAct(expanded, expanded, kernel, stride, groups=expanded),
                   SqueezeExcitation(expanded, max(1, in_channels // 4)),
                   ConvNormAct(expanded, out_channels, 1, activation=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out  # stochastic depth is the identity at inference


# EfficientNet-B0 stages: (expand ratio, kernel, stride, in channels, out channels, layers)
_B0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class EfficientNetB1(nn.Module):
    """EfficientNet-B1 (B0 stages, width x1.0, depth x1.1) with torchvision's ``features.N`` names."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, depth_mult: float = 1.1):
        super().__init__()
        stages = [(e, k, s, _make_divisible(i * width_mult), _make_divisible(o * width_mult),
                   math.ceil(n * depth_mult)) for e, k, s, i, o, n in _B0_STAGES]
        layers: list[nn.Module] = [ConvNormAct(3, stages[0][3], 3, stride=2)]
        for expand, kernel, stride, in_channels, out_channels, repeats in stages:
            blocks = []
            for index in range(repeats):
                blocks.append(MBConv(expand, kernel, stride if index == 0 else 1,
                                     in_channels if index == 0 else out_channels, out_channels))
            layers.append(nn.Sequential(*blocks))
        last_in = stages[-1][4]
        layers.append(ConvNormAct(last_in, 4 * last_in, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(4 * last_in, num_classes))

    def avgpool_features(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's ``avgpool`` node, flattened: (n, 1280)."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool_features(x))


# --------------------------------------------------------------------------- loading


NETWORKS = {"alexnet": AlexNet, "resnet50": ResNet50, "swav": ResNet50, "inception_v3": InceptionV3,
            "efficientnet_b1": EfficientNetB1}
# stems of the standard files, in order of preference (the reference's weights first)
WEIGHT_FILES = {
    "alexnet": ["alexnet-owt-7be5be79"],
    "resnet50": ["resnet50-0676ba61", "resnet50-11ad3fa6"],
    "swav": ["swav_800ep_pretrain"],
    "inception_v3": ["inception_v3_google-0cc3c7bd"],
    "efficientnet_b1": ["efficientnet_b1-c27df63c", "efficientnet_b1_rwightman-bac287d4"],
}
EXTENSIONS = [".pth", ".pth.tar", ".safetensors"]
# SwAV's checkpoint holds its training heads too; torch.hub's loader skips them (strict=False)
_SWAV_HEADS = ("projection_head.", "prototypes.")


def find_weight_file(name: str, weights_dir: str | Path) -> Path:
    if name not in WEIGHT_FILES:
        raise EvaluationError(f"unknown feature network {name!r}; choose from {sorted(WEIGHT_FILES)}")
    candidates = [stem + ext for stem in WEIGHT_FILES[name] for ext in EXTENSIONS]
    if weights_dir is None or not Path(weights_dir).is_dir():
        raise WeightsUnavailable(f"weights directory {weights_dir} does not exist; {name} needs one of "
                                 f"{', '.join(candidates)}")
    for filename in candidates:
        if (Path(weights_dir) / filename).is_file():
            return Path(weights_dir) / filename
    raise WeightsUnavailable(f"{name} weights not found in {weights_dir}: expected one of {', '.join(candidates)}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors``, or from ``.pth``/``.pth.tar`` via ``torch.load(weights_only=True)``."""
    path = Path(path)
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # unreadable or unsafe pickle: say which file and why
        raise WeightsUnavailable(f"cannot read weights {path}: {type(error).__name__}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path} does not hold a flat state dict of tensors")
    return dict(state)


def _fill_batchnorm_counters(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    # Files saved before PyTorch 0.4.1 (the Inception-era weights) have no BatchNorm
    # ``num_batches_tracked`` buffers; they only count training steps and never affect
    # inference, so a missing one is filled with 0 (what a fresh BatchNorm holds).
    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)


def load_feature_net(name: str, weights_dir: str | Path) -> nn.Module:
    """Build network ``name`` and load its standard weight file from ``weights_dir`` strictly; eval mode.

    Raises ``WeightsUnavailable`` (an ``EvaluationError``) naming the files it looked for.
    """
    path = find_weight_file(name, weights_dir)
    state = read_state_dict(path)
    # Built on the meta device (no random init of ~60M parameters), then every tensor is
    # taken from the file (assign=True); strict loading guarantees nothing is left unset.
    with torch.device("meta"):
        model = NETWORKS[name]()
    if name == "swav":
        state = {key.removeprefix("module."): value for key, value in state.items()}
        state = {key: value for key, value in state.items() if not key.startswith(_SWAV_HEADS)}
        # SwAV has no ImageNet classifier (torch.hub leaves fc at its random init); the metric
        # reads avgpool, so fc is zero-filled here. Every backbone tensor must be in the file.
        state.setdefault("fc.weight", torch.zeros(1000, 2048))
        state.setdefault("fc.bias", torch.zeros(1000))
    _fill_batchnorm_counters(model, state)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise WeightsUnavailable(f"{path} does not match the {name} architecture: {error}") from error
    return model.eval().requires_grad_(False)


__all__ = [
    "NETWORKS",
    "WEIGHT_FILES",
    "AlexNet",
    "EfficientNetB1",
    "InceptionV3",
    "MetricUnavailable",
    "ResNet50",
    "WeightsUnavailable",
    "find_weight_file",
    "load_feature_net",
    "read_state_dict",
]
