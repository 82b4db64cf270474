"""Mind Reader (Lin, Sprague & Singh, NeurIPS 2022): a 1-D CNN from one subject's voxels to CLIP embeddings.

The voxel vector is read as a 1-D signal: a strided convolution, residual
convolution blocks and a 1x1 convolution give `token_channels` feature maps
along the (halved) voxel axis; an "fc" stage then collapses the length axis with
learned weights (Linear over length, L/2 -> fc_hidden -> 1), leaving one vector.
One such mapper predicts the CLIP image embedding, a second the caption
embedding. Convolutions see neighbouring voxels only, but the length-axis fc is
a full linear read-out over voxel positions, so any voxel ordering works. In the
paper every output channel shares that fc's weights (`fc: shared`, the default);
`fc: per_channel` gives each channel its own, an ablation, not the paper's model.

Targets are clamped to +/-`clamp` and L2-normalised before the loss, as Mind
Reader does "to remove spikes"; predictions therefore live in that clamped,
unit-norm space (retrieval compares directions, which is unaffected).
The model is single-subject: the length-axis fc is sized by the voxel count.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.config import StrictConfig
from brainrecon.errors import ConfigError
from brainrecon.models.base import BrainModel, StepInfo, SubjectBatch, TargetSpace
from brainrecon.models.losses import mse_cos_loss


class MindReaderConfig(StrictConfig):
    channels: int = 64  # feature maps of the residual CNN
    n_res_blocks: int = 4
    kernel: int = 4  # first (strided) convolution
    stride: int = 2
    token_channels: int = 512  # feature maps after the 1x1 projection: the output vector's width
    fc_hidden: int = 128  # width of the length-axis fc (L/2 -> fc_hidden -> 1)
    # "shared": the paper's fc, one set of length weights for every output channel; "per_channel": each output
    # channel reads the length axis with its own weights (an ablation: is the shared read-out what limits it?)
    fc: Literal["shared", "per_channel"] = "shared"
    cos_weight: float = 0.6  # w in (1 - w) * MSE + w * (1 - cos)
    clamp: float = 1.5  # targets are clamped to +/- clamp, then L2-normalised
    text: bool = True  # also train the caption mapper (needs the text_pooled target)


class ResidualConvBlock(nn.Module):
    """conv k3 -> ReLU -> conv k3 -> ReLU -> conv k1, added to the input, then ReLU (length kept)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class PerChannelFC(nn.Module):
    """The length-axis fc with its own weights per channel: (B, C, L) -> (B, C), L -> hidden -> 1 for each C."""

    def __init__(self, channels: int, length: int, hidden: int):
        super().__init__()
        # nn.Linear's initialisation, channel by channel: uniform within 1/sqrt(fan_in)
        self.weight1 = nn.Parameter(torch.empty(channels, length, hidden).uniform_(-length ** -0.5, length ** -0.5))
        self.bias1 = nn.Parameter(torch.empty(channels, hidden).uniform_(-length ** -0.5, length ** -0.5))
        self.weight2 = nn.Parameter(torch.empty(channels, hidden).uniform_(-hidden ** -0.5, hidden ** -0.5))
        self.bias2 = nn.Parameter(torch.empty(channels).uniform_(-hidden ** -0.5, hidden ** -0.5))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(torch.einsum("bcl,clh->bch", maps, self.weight1) + self.bias1)
        return (hidden * self.weight2).sum(-1) + self.bias2


class FmriClipRes(nn.Module):
    """Mind Reader's `fmri_clip_res` mapper: (B, n_voxels) -> (B, out_dim)."""

    def __init__(self, n_voxels: int, out_dim: int, config: MindReaderConfig):
        super().__init__()
        # padding (k - s) // 2 makes the strided conv's output length n_voxels // stride for k4 s2, odd or even
        padding = max(0, (config.kernel - config.stride) // 2)
        self.length = (n_voxels + 2 * padding - config.kernel) // config.stride + 1
        if self.length < 1:
            raise ConfigError(f"mindreader: {n_voxels} voxels are too few for a kernel of {config.kernel}")
        self.convs = nn.Sequential(
            nn.Conv1d(1, config.channels, config.kernel, stride=config.stride, padding=padding), nn.ReLU(),
            *(ResidualConvBlock(config.channels) for _ in range(config.n_res_blocks)),
            nn.Conv1d(config.channels, config.token_channels, 1),
        )
        # the "fc": 1x1 convolutions whose channels are the length axis, i.e. Linear layers over length
        self.shared_fc = config.fc == "shared"
        self.fc = (nn.Sequential(nn.Linear(self.length, config.fc_hidden), nn.ReLU(), nn.Linear(config.fc_hidden, 1))
                   if self.shared_fc else PerChannelFC(config.token_channels, self.length, config.fc_hidden))
        self.out = nn.Linear(config.token_channels, out_dim) if out_dim != config.token_channels else nn.Identity()

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        maps = self.convs(betas.unsqueeze(1))  # (B, token_channels, length)
        read = self.fc(maps).squeeze(-1) if self.shared_fc else self.fc(maps)  # (B, token_channels)
        return self.out(read)  # (B, out_dim)


class MindReader(BrainModel):
    kind = "mindreader"
    config_class = MindReaderConfig
    required_targets = ("image_pooled", "text_pooled")  # with the default text=True
    retrieval_target = "image_pooled"

    def __init__(self, config: MindReaderConfig, subjects: dict[str, int], space: TargetSpace):
        if len(subjects) > 1:
            raise ConfigError(f"mindreader is single-subject, but {len(subjects)} subjects were given "
                              f"({', '.join(subjects)}); train one run per subject")
        # what this config needs (the class default assumes text): set before the base class checks it
        self.required_targets = ("image_pooled", "text_pooled") if config.text else ("image_pooled",)
        super().__init__(config, subjects, space)
        (n_voxels,) = self.subjects.values()
        for name in self.required_targets:
            if len(space[name]) != 1:
                raise ConfigError(f"mindreader: target {name!r} must be a vector, got shape {space[name]}")
        self.mappers = nn.ModuleDict({name: FmriClipRes(n_voxels, space[name][0], config)
                                      for name in self.required_targets})

    def normalize_target(self, target: torch.Tensor) -> torch.Tensor:
        """Clamp to +/-clamp, then L2-normalise: the space the mappers are trained to predict."""
        return F.normalize(target.clamp(-self.config.clamp, self.config.clamp), dim=-1)

    def predict(self, betas: torch.Tensor, subject: str) -> dict[str, torch.Tensor]:
        self.check_subject(subject, betas)
        return {name: mapper(betas) for name, mapper in self.mappers.items()}

    def training_loss(self, batches: list[SubjectBatch], info: StepInfo,
                      generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over the mappers of mse_cos(prediction, clamped and normalised target)."""
        if len(batches) != 1:
            raise ConfigError(f"mindreader is single-subject; got batches of {len(batches)} subjects")
        (batch,) = batches
        preds = self.predict(batch.betas, batch.subject)
        logs: dict[str, float] = {}
        losses = []
        for name, pred in preds.items():
            loss = mse_cos_loss(pred, self.normalize_target(batch.targets[name]), self.config.cos_weight)
            logs[f"mse_cos_{name.split('_')[0]}"] = float(loss.detach())
            losses.append(loss)
        total = torch.stack(losses).sum()
        logs["loss"] = float(total.detach())
        return total, logs
