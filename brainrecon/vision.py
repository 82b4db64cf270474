"""Image-statistics primitives shared by the simulator's encoding model and the
hand-crafted embedder: a Gabor energy pyramid and colour-opponent maps.

Images are float32 tensors (n, H, W, 3) in [0, 1]. Filters are defined in
cycles per image, so a world rendered at 64 or 256 px has the same features.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ORIENTATIONS = 4
CYCLES_PER_IMAGE = (4.0, 8.0, 16.0)  # three octave-spaced scales
GABOR_CHANNELS = ORIENTATIONS * len(CYCLES_PER_IMAGE)
COLOUR_CHANNELS = ("luminance", "red-green", "blue-yellow", "chroma", "local-contrast", "fine-energy")


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float32 tensor in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(images))
    return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()


def luminance(images: torch.Tensor) -> torch.Tensor:
    return images @ torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype)


def _gabor_bank(size: int) -> torch.Tensor:
    """One-lobe (analytic) Gabor filters in the 2-D frequency domain: (channels, size, size).

    Each filter is a Gaussian bump centred on one orientation and spatial
    frequency, with about one octave of bandwidth. Keeping a single lobe makes
    the filtered image complex: its real and imaginary parts are the even and
    odd (quadrature) Gabor responses, and its magnitude is the phase-invariant
    local energy that classic V1 encoding models pool.
    """
    freq = torch.fft.fftfreq(size) * size  # cycles per image
    fyy, fxx = torch.meshgrid(freq, freq, indexing="ij")
    filters = []
    for cycles in CYCLES_PER_IMAGE:
        bandwidth = cycles * 0.4
        for k in range(ORIENTATIONS):
            theta = math.pi * k / ORIENTATIONS
            cx, cy = cycles * math.cos(theta), cycles * math.sin(theta)
            filters.append(torch.exp(-((fxx - cx) ** 2 + (fyy - cy) ** 2) / (2 * bandwidth ** 2)))
    return torch.stack(filters)


_BANKS: dict[int, torch.Tensor] = {}


def gabor_energy(images: torch.Tensor) -> torch.Tensor:
    """Local Gabor energy maps (n, GABOR_CHANNELS, H, W); channel = scale * ORIENTATIONS + orientation."""
    n, h, w, _ = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    if h not in _BANKS:
        _BANKS[h] = _gabor_bank(h)
    lum = luminance(images)
    spectrum = torch.fft.fft2(lum - lum.mean(dim=(1, 2), keepdim=True))
    return torch.fft.ifft2(spectrum[:, None] * _BANKS[h][None]).abs()


def images_per_batch(size: int, budget_bytes: int = 1 << 24) -> int:
    """How many size x size images to filter at once so the complex Gabor responses (which
    dominate memory: channels x H x W x 8 bytes per image) stay within ``budget_bytes``.

    16 MB, not more: blocks above glibc's 32 MB mmap ceiling are mapped and unmapped on every call, and
    their page faults cost more than the filtering (256 MB blocks made it 1.6x slower on CPU). Each
    image is filtered on its own, so the batch size never changes a result."""
    return max(1, budget_bytes // (GABOR_CHANNELS * size * size * 8))


def colour_texture_maps(images: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """Per-pixel colour and texture channels (n, 6, H, W), in the order of COLOUR_CHANNELS."""
    r, g, b = images.unbind(-1)
    lum = luminance(images)
    red_green = r - g
    blue_yellow = b - (r + g) / 2
    chroma = torch.sqrt(red_green ** 2 + blue_yellow ** 2)
    local_mean = F.avg_pool2d(lum[:, None], 5, stride=1, padding=2, count_include_pad=False)[:, 0]
    local_sq = F.avg_pool2d(lum[:, None] ** 2, 5, stride=1, padding=2, count_include_pad=False)[:, 0]
    contrast = torch.sqrt((local_sq - local_mean ** 2).clamp_min(0) + 1e-12)
    fine = energy[:, -ORIENTATIONS:].mean(dim=1)
    return torch.stack([lum, red_green, blue_yellow, chroma, contrast, fine], dim=1)


def pool_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool (n, c, H, W) maps onto a grid x grid layout."""
    return F.adaptive_avg_pool2d(maps, grid)
