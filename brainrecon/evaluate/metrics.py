"""The field's image-reconstruction metrics, implemented exactly as the reference code computes them.

Reference: MindEye1 ``Reconstruction_Metrics.py`` / MindEye2 ``final_evaluations.ipynb``
(docs/metrics.md has the full protocol). In short:

1. ground truth and reconstructions are resized to 256x256 (bilinear) and clamped to [0, 1];
2. each metric then resizes again to its own size (PixCorr/SSIM 425, AlexNet 256,
   InceptionV3 342, CLIP 224, EfficientNet-B1 255, SwAV 224) and scores:

- PixCorr: mean over images of Pearson r between flattened RGB pixels;
- SSIM: scikit-image's gaussian-weighted SSIM on ``rgb2gray`` images (re-implemented
  here in torch; tests cross-check against scikit-image);
- 2-way identification (AlexNet, Inception, CLIP): the reference's full N-way form;
- EffNet-B / SwAV: mean SciPy correlation distance between paired feature vectors.

Images are accepted as uint8 ``(n, H, W, 3)`` (scaled by 1/255) or float ``(n, H, W, 3)``
in [0, 1], as NumPy arrays or torch tensors. Computation is float64 throughout the
pixel metrics (the reference used float32; the difference is ~1e-6).

Resizing: bilinear, ``align_corners=False``, **no antialiasing by default**. The reference
resizes float tensors with ``torchvision.transforms.Resize`` without an ``antialias``
argument; with torchvision < 0.17 that means no antialiasing for tensors, and the saved
output of MindEye2's ``final_evaluations.ipynb`` shows the torchvision < 0.17 antialias
warning, so the published runs resized without it (MindEye1 predates 0.17 too). Pass
``antialias=True`` to reproduce torchvision >= 0.17. It only matters when downsampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brainrecon.errors import EvaluationError
from brainrecon.evaluate.feature_nets import MetricUnavailable, WeightsUnavailable, load_feature_net

PROTOCOL_SIZE = 256  # everything is first resized to this and clamped to [0, 1]
PIXEL_METRIC_SIZE = 425
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# skimage.color.rgb2gray weights (ITU-R BT.709 luma), as the reference SSIM uses
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)
# skimage structural_similarity constants for gaussian_weights=True
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

# Float inputs are clamped to [0, 1] as the reference does, so slight overshoot from a
# decoder is fine; values far outside mean the wrong scale ([0, 255] or [-1, 1]) and
# would silently give nonsense after clamping.
_FLOAT_LOW, _FLOAT_HIGH = -0.5, 1.5
_CHUNK = 32  # images per chunk, to bound memory at 425x425 float64


# --------------------------------------------------------------------------- validation


def check_images(images, name: str) -> torch.Tensor:
    """Validate ``(n, H, W, 3)`` uint8 or float [0, 1] images; returns them as a CPU tensor, dtype unchanged.

    Kept in the caller's dtype so that large sets are converted to float64 a chunk at a time.
    """
    if isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
    elif isinstance(images, np.ndarray):
        # read-only arrays (a store's memory map) are copied: torch wants writable memory
        tensor = torch.from_numpy(np.array(images) if not images.flags.writeable else np.ascontiguousarray(images))
    else:
        raise EvaluationError(f"{name} must be a NumPy array or torch tensor of images (n, H, W, 3), "
                              f"got {type(images).__name__}")
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        hint = " (a single image? add a batch axis)" if tensor.ndim == 3 else ""
        hint += " (channels-first? permute to (n, H, W, 3))" if tensor.ndim == 4 and tensor.shape[1] == 3 else ""
        raise EvaluationError(f"{name} must have shape (n, H, W, 3), got {tuple(tensor.shape)}{hint}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise EvaluationError(f"{name} is empty: shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all():
            raise EvaluationError(f"{name} contains NaN or infinite values")
        low, high = float(tensor.min()), float(tensor.max())
        if low < _FLOAT_LOW or high > _FLOAT_HIGH:
            raise EvaluationError(f"{name} float values span [{low:.3g}, {high:.3g}]; float images must be in "
                                  f"[0, 1] (convert [0, 255] data to uint8, map [-1, 1] data with (x + 1) / 2)")
    elif tensor.dtype != torch.uint8:
        raise EvaluationError(f"{name} must be uint8 or floating point, got {tensor.dtype}")
    return tensor


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """Checked ``(k, H, W, 3)`` images -> float64 ``(k, 3, H, W)`` in [0, 1] (uint8 divided by 255)."""
    tensor = images.to(torch.float64)
    if images.dtype == torch.uint8:
        tensor = tensor / 255.0
    return tensor.permute(0, 3, 1, 2).contiguous()


def as_image_batch(images, name: str = "images") -> torch.Tensor:
    """Validate ``(n, H, W, 3)`` uint8 or float images -> float64 tensor ``(n, 3, H, W)``, uint8 scaled by 1/255."""
    return _to_float(check_images(images, name))


def _check_pair(gt, recon) -> tuple[torch.Tensor, torch.Tensor]:
    gt_t, recon_t = check_images(gt, "gt"), check_images(recon, "recon")
    if len(gt_t) != len(recon_t):
        raise EvaluationError(f"gt and recon must hold the same number of images (pairs), "
                              f"got gt {len(gt_t)} and recon {len(recon_t)}")
    return gt_t, recon_t


def _as_features(features, name: str) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        tensor = features.detach().cpu()
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(features)))
    if tensor.ndim < 2:
        raise EvaluationError(f"{name} must be (n, ...) with one row of features per image, got shape "
                              f"{tuple(tensor.shape)}")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise EvaluationError(f"{name} must be numeric, got {tensor.dtype}")
    tensor = tensor.reshape(len(tensor), -1)
    if tensor.shape[1] < 2:
        raise EvaluationError(f"{name} needs at least 2 feature values per image, got {tensor.shape[1]}")
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise EvaluationError(f"{name} contains NaN or infinite values")
    return tensor


def _check_feature_pair(gt_features, recon_features, min_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gt, recon = _as_features(gt_features, "gt_features"), _as_features(recon_features, "recon_features")
    if gt.shape != recon.shape:
        raise EvaluationError(f"gt_features and recon_features must have the same shape after flattening, "
                              f"got {tuple(gt.shape)} and {tuple(recon.shape)}")
    if len(gt) < min_n:
        raise EvaluationError(f"need at least {min_n} images' features, got {len(gt)}")
    return gt, recon


# --------------------------------------------------------------------------- resizing


def resize(images, size: int | tuple[int, int] | None, *, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize (half-pixel centres, ``align_corners=False``) -> float64 ``(n, 3, h, w)``.

    ``images`` is validated like every metric input (``(n, H, W, 3)`` uint8 or float), or is
    already a float ``(n, 3, H, W)`` tensor from this module. An int ``size`` gives
    ``size x size``; this equals ``torchvision.transforms.Resize(size)`` for square inputs,
    which is all the protocol resizes after its first 256x256 step. A no-op when the size
    already matches (as torchvision returns the input unchanged) and when ``size`` is None.
    """
    tensor = images if _is_internal(images) else as_image_batch(images, "images")
    if size is None:
        return tensor
    target = (size, size) if isinstance(size, int) else tuple(size)
    if len(target) != 2 or min(target) < 1:
        raise EvaluationError(f"size must be a positive int or (height, width), got {size!r}")
    if tuple(tensor.shape[-2:]) == target:
        return tensor
    return F.interpolate(tensor, size=target, mode="bilinear", align_corners=False, antialias=antialias)


def _is_internal(images) -> bool:
    return isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3 \
        and images.dtype == torch.float64


def protocol_images(tensor: torch.Tensor, preresize: int | None, antialias: bool) -> torch.Tensor:
    """Step 1 of the protocol: resize to 256x256 and clamp to [0, 1] (``preresize=None`` only clamps)."""
    if preresize is not None:
        tensor = resize(tensor, preresize, antialias=antialias)
    return tensor.clamp(0.0, 1.0)


def _chunks(n: int, size: int = _CHUNK):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# --------------------------------------------------------------------------- pixel metrics


def _rowwise_pearson(a: torch.Tensor, b: torch.Tensor, what: str) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    # "constant" up to rounding: resizing a flat image can leave ~1e-8 ripples depending on the kernel path
    floor = 1e-6 * a.shape[1] ** 0.5 * torch.maximum(a.abs().amax(), b.abs().amax()).clamp_min(1.0)
    constant = (norm_a <= floor) | (norm_b <= floor)
    norms = norm_a * norm_b
    if constant.any():
        bad = int(torch.nonzero(constant)[0])
        raise EvaluationError(f"{what}: pair {bad} has a constant image or feature vector, for which "
                              f"the correlation is undefined (the reference would produce NaN)")
    return (a * b).sum(dim=1) / norms


def pixcorr(gt, recon, *, size: int | None = PIXEL_METRIC_SIZE, preresize: int | None = PROTOCOL_SIZE,
            antialias: bool = False, per_image: bool = False):
    """PixCorr: mean over pairs of Pearson r between flattened RGB pixels at ``size`` x ``size``.

    Matches the reference loop ``np.corrcoef(gt_i.flatten(), recon_i.flatten())[0, 1]``.
    ``preresize=None`` skips the 256 step and ``size=None`` the metric's own resize (used to
    score images exactly as given, e.g. in the cross-checks).
    """
    gt_t, recon_t = _check_pair(gt, recon)
    scores = []
    for part in _chunks(len(gt_t)):
        a = resize(protocol_images(_to_float(gt_t[part]), preresize, antialias), size, antialias=antialias)
        b = resize(protocol_images(_to_float(recon_t[part]), preresize, antialias), size, antialias=antialias)
        scores.append(_rowwise_pearson(a.flatten(1), b.flatten(1), "PixCorr"))
    scores = torch.cat(scores).numpy()
    return scores if per_image else float(scores.mean())


def rgb2gray(images: torch.Tensor) -> torch.Tensor:
    """``(n, 3, H, W)`` -> ``(n, H, W)`` with scikit-image's ``rgb2gray`` weights."""
    weights = torch.tensor(GRAY_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1)


def _gaussian_kernel(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    # scipy.ndimage.gaussian_filter's kernel: radius int(truncate * sigma + 0.5) (5 -> 11 taps), sums to 1
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * x ** 2 / sigma ** 2)
    return kernel / kernel.sum()


def ssim_gray(gt_gray: torch.Tensor, recon_gray: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of float64 grayscale batches ``(n, H, W)``, data_range 1.

    Equals ``skimage.metrics.structural_similarity(recon, gt, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)``: local means and (population) variances from
    an 11-tap separable gaussian, then the mean of the SSIM map over the region skimage keeps
    after cropping ``(win_size - 1) // 2 = 5`` pixels per side. Exactly that region is where the
    gaussian never reaches the border, so a 'valid' convolution reproduces it without padding
    (skimage's 'reflect' border mode never enters the result).
    """
    kernel = _gaussian_kernel()
    taps = len(kernel)
    if gt_gray.shape[-1] < taps or gt_gray.shape[-2] < taps:
        raise EvaluationError(f"SSIM needs images of at least {taps}x{taps} pixels, got {tuple(gt_gray.shape[-2:])}")
    x, y = gt_gray.unsqueeze(1), recon_gray.unsqueeze(1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # the five maps skimage filters
    channels = stack.shape[1]
    rows = kernel.view(1, 1, taps, 1).expand(channels, 1, taps, 1)
    cols = kernel.view(1, 1, 1, taps).expand(channels, 1, 1, taps)
    filtered = F.conv2d(F.conv2d(stack, rows, groups=channels), cols, groups=channels)
    ux, uy, uxx, uyy, uxy = filtered.unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy  # use_sample_covariance=False: cov_norm 1
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2  # data_range 1
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s_map.flatten(1).mean(dim=1)


def ssim(gt, recon, *, size: int | None = PIXEL_METRIC_SIZE, preresize: int | None = PROTOCOL_SIZE,
         antialias: bool = False, per_image: bool = False):
    """SSIM as the reference: resize to ``size``, ``rgb2gray``, gaussian-weighted SSIM, mean over images.

    SSIM is symmetric in its two images, so the reference's argument order (recon, gt) does
    not matter. The reference passes ``multichannel=True`` on 2-D grayscale input; scikit-image
    >= 0.20 (MindEye2 pins 0.22) ignores that unknown keyword, so the score is plain 2-D SSIM,
    which is what this computes (docs/metrics.md notes the older behaviour).
    """
    gt_t, recon_t = _check_pair(gt, recon)
    scores = []
    for part in _chunks(len(gt_t)):
        a = rgb2gray(resize(protocol_images(_to_float(gt_t[part]), preresize, antialias), size, antialias=antialias))
        b = rgb2gray(resize(protocol_images(_to_float(recon_t[part]), preresize, antialias), size,
                            antialias=antialias))
        scores.append(ssim_gray(a, b))
    scores = torch.cat(scores).numpy()
    return scores if per_image else float(scores.mean())


# --------------------------------------------------------------------------- feature-space scores


def _row_stats(features: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean (n, 1) and centred norm (n,) in float64, a chunk of rows at a time."""
    means, norms = [], []
    for part in _chunks(len(features), chunk):
        rows = features[part].to(torch.float64)
        mean = rows.mean(dim=1, keepdim=True)
        means.append(mean)
        norms.append((rows - mean).norm(dim=1))
    return torch.cat(means), torch.cat(norms)


def _correlation_matrix(gt: torch.Tensor, recon: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """r[i, j] = Pearson corr(gt_i, recon_j) in float64, built block-wise to bound memory."""
    gt_mean, gt_norm = _row_stats(gt, chunk)
    rec_mean, rec_norm = _row_stats(recon, chunk)
    for name, norms in (("gt_features", gt_norm), ("recon_features", rec_norm)):
        if (norms == 0).any():
            raise EvaluationError(f"{name} row {int(torch.nonzero(norms == 0)[0])} is constant; its correlation "
                                  f"with anything is undefined (the reference would produce NaN)")
    r = torch.empty(len(gt), len(recon), dtype=torch.float64)
    for gi in _chunks(len(gt), chunk):
        g = gt[gi].to(torch.float64) - gt_mean[gi]
        for rj in _chunks(len(recon), chunk):
            rec = recon[rj].to(torch.float64) - rec_mean[rj]
            r[gi, rj] = (g @ rec.T) / (gt_norm[gi, None] * rec_norm[None, rj])
    return r.clamp(-1.0, 1.0)  # as np.corrcoef clips


def two_way_identification(gt_features, recon_features, *, per_item: bool = False):
    """The reference's "2-way identification", which is a full N-way comparison.

    ``r[i, j] = corr(gt_i, recon_j)`` over flattened features; for each reconstruction j,
    count the ground truths i != j with ``r[i, j] < r[j, j]`` (strictly), divide by N - 1,
    and average over j. Chance is 0.5. ``per_item=True`` returns the per-reconstruction
    fractions instead of their mean.
    """
    gt, recon = _check_feature_pair(gt_features, recon_features, min_n=2)
    r = _correlation_matrix(gt, recon)
    congruent = torch.diagonal(r)
    wins = (r < congruent[None, :]).sum(dim=0).to(torch.float64)  # the diagonal never counts: r_jj < r_jj is False
    fractions = (wins / (len(gt) - 1)).numpy()
    return fractions if per_item else float(fractions.mean())


def correlation_distance(gt_features, recon_features, *, per_item: bool = False):
    """Mean of ``scipy.spatial.distance.correlation(gt_i, recon_i)`` over pairs (lower is better).

    ``1 - Pearson r`` of each paired, flattened feature vector, clipped to [0, 2] as SciPy does.
    """
    gt, recon = _check_feature_pair(gt_features, recon_features, min_n=1)
    r = torch.cat([_rowwise_pearson(gt[part].to(torch.float64), recon[part].to(torch.float64), "correlation distance")
                   for part in _chunks(len(gt), 256)])
    distances = (1.0 - r).clamp(0.0, 2.0).numpy()
    return distances if per_item else float(distances.mean())


# --------------------------------------------------------------------------- network metrics


@dataclass(frozen=True)
class FeatureMetric:
    """One network-based metric of the protocol."""

    name: str
    net: str  # load_feature_net name; "clip" is supplied by the caller as an encoder
    node: str  # the reference's create_feature_extractor return node
    size: int  # resize after the 256 step
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    score: str  # "two_way" (higher is better) or "correlation_distance" (lower is better)

    @property
    def higher_is_better(self) -> bool:
        return self.score == "two_way"


FEATURE_METRICS: dict[str, FeatureMetric] = {
    "alexnet2": FeatureMetric("AlexNet(2)", "alexnet", "features.4", 256, IMAGENET_MEAN, IMAGENET_STD, "two_way"),
    "alexnet5": FeatureMetric("AlexNet(5)", "alexnet", "features.11", 256, IMAGENET_MEAN, IMAGENET_STD, "two_way"),
    "inception": FeatureMetric("InceptionV3", "inception_v3", "avgpool", 342, IMAGENET_MEAN, IMAGENET_STD,
                               "two_way"),
    "clip": FeatureMetric("CLIP", "clip", "image_embeds", 224, CLIP_MEAN, CLIP_STD, "two_way"),
    "effnet": FeatureMetric("EffNet-B", "efficientnet_b1", "avgpool", 255, IMAGENET_MEAN, IMAGENET_STD,
                            "correlation_distance"),
    "swav": FeatureMetric("SwAV", "swav", "avgpool", 224, IMAGENET_MEAN, IMAGENET_STD, "correlation_distance"),
}


def network_inputs(images: torch.Tensor, metric: FeatureMetric, *, size: int | None = None,
                   antialias: bool = False) -> torch.Tensor:
    """Protocol images (already 256 and clamped) -> the network's float32 normalised input."""
    pixels = resize(images, size or metric.size, antialias=antialias)
    mean = torch.tensor(metric.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(metric.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(torch.float32)


@torch.no_grad()
def extract_features(images, metric: FeatureMetric, encoder: Callable[[torch.Tensor], torch.Tensor], *,
                     size: int | None = None, antialias: bool = False, batch_size: int = 32,
                     device: str | torch.device = "cpu", preresize: int | None = PROTOCOL_SIZE,
                     name: str = "images") -> torch.Tensor:
    """Features ``(n, d)`` (float32, CPU) of ``(n, H, W, 3)`` images through ``encoder``, a batch at a time.

    Each batch goes through the full protocol: 256 + clamp, the metric's size, normalisation.
    """
    images = check_images(images, name)
    out = []
    for part in _chunks(len(images), batch_size):
        pixels = protocol_images(_to_float(images[part]), preresize, antialias)
        batch = network_inputs(pixels, metric, size=size, antialias=antialias).to(device)
        out.append(encoder(batch).float().flatten(1).cpu())
    return torch.cat(out)


def net_encoder(net: torch.nn.Module, node: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if node == "avgpool":
        return net.avgpool_features
    return lambda x: net.feature_maps(x, (node,))[node]


def feature_metric(metric: str, gt, recon, *, weights_dir: str | Path | None = None,
                   encoder: Callable[[torch.Tensor], torch.Tensor] | None = None, size: int | None = None,
                   antialias: bool = False, batch_size: int = 32, device: str | torch.device = "cpu",
                   preresize: int | None = PROTOCOL_SIZE):
    """One network metric (``alexnet2``, ``alexnet5``, ``inception``, ``clip``, ``effnet``, ``swav``).

    The network is loaded from ``weights_dir`` (standard torchvision / SwAV file names, see
    ``feature_nets.WEIGHT_FILES``) unless ``encoder`` is given: any callable from normalised
    float32 ``(n, 3, s, s)`` pixels to features. CLIP always needs an ``encoder`` (e.g. the
    image embeds of a ``ClipImageEmbedder``; ``size`` overrides 224 for a smaller CLIP).
    Returns the score as a float, or a ``MetricUnavailable`` saying why it could not be
    computed (weights absent) - never a made-up number.
    """
    if metric not in FEATURE_METRICS:
        raise EvaluationError(f"unknown metric {metric!r}; choose from {sorted(FEATURE_METRICS)}")
    spec = FEATURE_METRICS[metric]
    gt_t, recon_t = _check_pair(gt, recon)
    if encoder is None:
        if spec.net == "clip":
            return MetricUnavailable(spec.name, "no CLIP image encoder supplied (pass encoder=, e.g. a local "
                                                "CLIP's image embeds); OpenAI ViT-L/14 weights cannot be downloaded")
        if weights_dir is None:
            return MetricUnavailable(spec.name, f"no weights directory given for {spec.net}")
        try:
            net = load_feature_net(spec.net, weights_dir).to(device)
        except WeightsUnavailable as error:
            return MetricUnavailable(spec.name, str(error))
        encoder = net_encoder(net, spec.node)
    return score_with_network(gt_t, recon_t, spec, encoder, size=size, antialias=antialias, batch_size=batch_size,
                              device=device, preresize=preresize)


def score_with_network(gt, recon, spec: FeatureMetric, encoder: Callable[[torch.Tensor], torch.Tensor], *,
                       per_item: bool = False, **protocol):
    """Both image sets through ``encoder`` (``extract_features`` options in ``protocol``), then the metric's score."""
    gt_features = extract_features(gt, spec, encoder, name="gt", **protocol)
    recon_features = extract_features(recon, spec, encoder, name="recon", **protocol)
    if spec.score == "two_way":
        return two_way_identification(gt_features, recon_features, per_item=per_item)
    return correlation_distance(gt_features, recon_features, per_item=per_item)


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FEATURE_METRICS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FeatureMetric",
    "MetricUnavailable",
    "as_image_batch",
    "check_images",
    "correlation_distance",
    "extract_features",
    "feature_metric",
    "net_encoder",
    "network_inputs",
    "pixcorr",
    "protocol_images",
    "resize",
    "rgb2gray",
    "score_with_network",
    "ssim",
    "ssim_gray",
    "two_way_identification",
]
