"""Reconstruction metrics: exactness against scikit-image / NumPy / SciPy, and the feature networks.

The two scikit-image cross-checks skip when scikit-image is absent (it is a test extra); the
rest needs only the runtime stack. Networks use random weights: no pretrained file can be
downloaded here, so what is tested is key compatibility with torchvision, strict loading,
determinism and output shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import shift as nd_shift
from scipy.spatial.distance import correlation as scipy_correlation

from brainrecon.errors import EvaluationError
from brainrecon.evaluate.feature_nets import (
    AlexNet,
    EfficientNetB1,
    InceptionV3,
    MetricUnavailable,
    ResNet50,
    WeightsUnavailable,
    load_feature_net,
)
from brainrecon.evaluate.metrics import (
    CLIP_MEAN,
    CLIP_STD,
    correlation_distance,
    feature_metric,
    pixcorr,
    resize,
    ssim,
    two_way_identification,
)

# --------------------------------------------------------------------------- photographs


@pytest.fixture(scope="module")
def photo_pairs():
    """Real photographs (300x300 crops, float64 [0, 1]) and blurred / noised / shifted versions."""
    skimage = pytest.importorskip("skimage")
    from skimage import data, filters

    rng = np.random.default_rng(0)
    gts, recons = [], []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = skimage.img_as_float(getattr(data, name)())[:300, -300:]
        assert image.shape == (300, 300, 3)
        blurred = filters.gaussian(image, sigma=2.0, channel_axis=-1)
        noised = np.clip(image + rng.normal(0, 0.08, image.shape), 0, 1)
        shifted = nd_shift(image, (6, -4, 0), mode="nearest")
        for distorted in (blurred, noised, shifted):
            gts.append(image)
            recons.append(distorted)
    return np.stack(gts), np.stack(recons)


def _skimage_ssim(gt_rgb, recon_rgb, dtype):
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    # exactly the reference call (argument order recon, gt; multichannel=True is ignored by skimage >= 0.20)
    return structural_similarity(rgb2gray(recon_rgb.astype(dtype)), rgb2gray(gt_rgb.astype(dtype)),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)


def test_ssim_matches_skimage_on_photographs(photo_pairs):
    gts, recons = photo_pairs
    ours = ssim(gts, recons, size=None, preresize=None, per_image=True)  # scored as given: no resize at all
    expected64 = np.array([_skimage_ssim(g, r, np.float64) for g, r in zip(gts, recons)])
    expected32 = np.array([_skimage_ssim(g, r, np.float32) for g, r in zip(gts, recons)])  # the reference's dtype
    assert np.abs(ours - expected64).max() <= 1e-4
    assert np.abs(ours - expected64).max() < 1e-10  # in fact exact up to rounding
    assert np.abs(ours - expected32).max() <= 1e-4
    assert ssim(gts, recons, size=None, preresize=None) == pytest.approx(expected64.mean(), abs=1e-10)
    # the distortions are really different from each other and from identity
    assert expected64.min() < 0.9 and np.ptp(expected64) > 0.1
    # uint8 input goes through /255 as the reference's float images would
    gt8, rec8 = (gts[:3] * 255).round().astype(np.uint8), (recons[:3] * 255).round().astype(np.uint8)
    expected8 = [_skimage_ssim(g / 255.0, r / 255.0, np.float64) for g, r in zip(gt8, rec8)]
    assert np.abs(ssim(gt8, rec8, size=None, preresize=None, per_image=True) - expected8).max() < 1e-10


def test_full_protocol_matches_skimage_and_numpy_after_resizing(photo_pairs):
    """Full protocol (resize to 256, clamp, resize to 425) on photographs of other sizes."""
    from skimage import data

    gt = np.stack([data.astronaut()[:300, :300], data.coffee()[:300, 100:400]])  # uint8, 300x300
    recon = np.stack([data.chelsea()[:300, :300], data.coffee()[50:350, 100:400]])
    staged = {name: resize(resize(images, 256).clamp(0, 1), 425).permute(0, 2, 3, 1).numpy()
              for name, images in (("gt", gt), ("recon", recon))}
    expected_ssim = [_skimage_ssim(g, r, np.float64) for g, r in zip(staged["gt"], staged["recon"])]
    expected_pix = [np.corrcoef(g.ravel(), r.ravel())[0, 1] for g, r in zip(staged["gt"], staged["recon"])]
    assert np.abs(ssim(gt, recon, per_image=True) - expected_ssim).max() <= 1e-4
    assert np.abs(pixcorr(gt, recon, per_image=True) - expected_pix).max() < 1e-10


def test_pixcorr_matches_numpy_corrcoef():
    rng = np.random.default_rng(1)
    gt = rng.random((4, 40, 40, 3))
    recon = np.clip(gt + rng.normal(0, 0.3, gt.shape), 0, 1)
    expected = [np.corrcoef(g.ravel(), r.ravel())[0, 1] for g, r in zip(gt, recon)]
    got = pixcorr(gt, recon, size=40, preresize=None, per_image=True)
    assert np.abs(got - expected).max() < 1e-12
    assert pixcorr(gt, gt, size=40, preresize=None) == pytest.approx(1.0)
    # channel order matters: a pixel-exact metric must see the swapped colours
    assert pixcorr(gt, gt[..., ::-1], size=40, preresize=None) < 0.99


# --------------------------------------------------------------------------- resize


def _bilinear_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Plain loops: half-pixel centres, edge clamping (align_corners=False, no antialias)."""
    in_h, in_w = image.shape
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        y = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(y)), in_h - 1)
        y1, wy = min(y0 + 1, in_h - 1), y - y0
        for j in range(out_w):
            x = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(x)), in_w - 1)
            x1, wx = min(x0 + 1, in_w - 1), x - x0
            top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
            bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
            out[i, j] = top * (1 - wy) + bottom * wy
    return out


def test_resize_is_bilinear_without_antialias_and_matches_pil_with_it():
    rng = np.random.default_rng(2)
    images = rng.random((1, 13, 17, 3))
    for size in [(7, 9), (20, 31)]:
        ours = resize(images, size).numpy()[0]
        for channel in range(3):
            assert np.abs(ours[channel] - _bilinear_reference(images[0, :, :, channel], *size)).max() < 1e-12
        smooth = resize(images, size, antialias=True).numpy()[0]
        pil = np.asarray(Image.fromarray(images[0, :, :, 0].astype(np.float32), mode="F")
                         .resize((size[1], size[0]), Image.BILINEAR))
        assert np.abs(smooth[0] - pil).max() < 1e-5
    # downsampling is where antialiasing differs; same size is a no-op
    assert np.abs(resize(images, 5).numpy() - resize(images, 5, antialias=True).numpy()).max() > 1e-3
    assert np.array_equal(resize(images, (13, 17)).permute(0, 2, 3, 1).numpy(), images)


# --------------------------------------------------------------------------- feature-space scores


def _two_way_brute_force(gt, recon):
    n = len(gt)
    r = np.corrcoef(gt.reshape(n, -1), recon.reshape(n, -1))[:n, n:]
    fractions = []
    for j in range(n):
        wins = sum(1 for i in range(n) if i != j and r[i, j] < r[j, j])
        fractions.append(wins / (n - 1))
    return np.array(fractions)


def test_two_way_identification_matches_brute_force():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(23, 4, 5)).astype(np.float32)  # trailing dims are flattened, as in the reference
    for noise in (0.5, 1.5, 4.0):
        recon = gt + noise * rng.normal(size=gt.shape).astype(np.float32)
        expected = _two_way_brute_force(gt, recon)
        assert np.array_equal(two_way_identification(gt, recon, per_item=True), expected)
        assert two_way_identification(torch.from_numpy(gt), torch.from_numpy(recon)) == pytest.approx(expected.mean())
    # asymmetric: the score is per reconstruction over ground truths, not the transpose
    recon = gt + 2.0 * rng.normal(size=gt.shape)
    assert not np.array_equal(_two_way_brute_force(gt, recon), _two_way_brute_force(recon, gt))
    assert np.array_equal(two_way_identification(gt, recon, per_item=True), _two_way_brute_force(gt, recon))
    assert two_way_identification(gt, gt) == 1.0
    assert two_way_identification(gt[:2], gt[:2] + 0.1 * gt[:2] ** 2) == 1.0  # N = 2 works


def test_correlation_distance_matches_scipy():
    rng = np.random.default_rng(4)
    gt = rng.normal(size=(9, 50))
    recon = gt + rng.normal(size=gt.shape)
    recon[0] = -gt[0] * 2 + 1  # perfectly anti-correlated -> distance 2
    expected = np.array([scipy_correlation(g, r) for g, r in zip(gt, recon)])
    got = correlation_distance(gt, recon, per_item=True)
    assert np.abs(got - expected).max() < 1e-12
    assert got[0] == pytest.approx(2.0)
    assert correlation_distance(gt, recon) == pytest.approx(expected.mean())
    assert correlation_distance(gt, gt * 3 + 2) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- validation


def test_inputs_are_validated_with_the_argument_named():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[:, ::2] = 200
    with pytest.raises(EvaluationError, match="same number of images"):
        pixcorr(images, images[:1])
    bad = images.astype(np.float64) / 255
    bad[1, 3, 3, 0] = np.nan
    with pytest.raises(EvaluationError, match="recon contains NaN"):
        ssim(images, bad)
    with pytest.raises(EvaluationError, match="gt contains NaN"):
        pixcorr(bad, images)
    with pytest.raises(EvaluationError, match=r"gt must have shape \(n, H, W, 3\).*channels-first"):
        ssim(images.transpose(0, 3, 1, 2), images)
    with pytest.raises(EvaluationError, match="single image"):
        pixcorr(images[0], images)
    with pytest.raises(EvaluationError, match=r"recon float values.*\[0, 1\]"):
        pixcorr(images, images.astype(np.float32))  # 0..255 floats: wrong scale
    with pytest.raises(EvaluationError, match="constant"):
        pixcorr(images, np.full_like(images, 128))
    features = np.random.default_rng(7).normal(size=(3, 10))
    with pytest.raises(EvaluationError, match="same shape"):
        two_way_identification(features, features[:, :5])
    with pytest.raises(EvaluationError, match="at least 2"):
        two_way_identification(features[:1], features[:1])
    nan_features = features.copy()
    nan_features[0, 0] = np.nan
    with pytest.raises(EvaluationError, match="recon_features contains NaN"):
        correlation_distance(features, nan_features)
    constant = features.copy()
    constant[1] = 5.0
    with pytest.raises(EvaluationError, match="gt_features row 1 is constant"):
        two_way_identification(constant, features)


# --------------------------------------------------------------------------- feature networks

# (class, file name, input size, output name -> shape, known torchvision keys -> shapes,
#  number of state-dict entries, torchvision's published parameter count)
NETS = {
    "alexnet": (AlexNet, "alexnet-owt-7be5be79.pth", 256,
                {"features.4": (192, 31, 31), "features.11": (256, 15, 15)},
                {"features.0.weight": (64, 3, 11, 11), "features.3.bias": (192,),
                 "features.10.weight": (256, 256, 3, 3),
                 "classifier.1.weight": (4096, 9216), "classifier.4.bias": (4096,), "classifier.6.bias": (1000,)},
                16, 61_100_840),
    "resnet50": (ResNet50, "resnet50-0676ba61.safetensors", 224, {"avgpool": (2048,)},
                 {"conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,),
                  "layer1.0.downsample.0.weight": (256, 64, 1, 1),
                  "layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.2.bn3.running_var": (2048,),
                  "fc.weight": (1000, 2048)},
                 320, 25_557_032),
    "inception_v3": (InceptionV3, "inception_v3_google-0cc3c7bd.pth", 342, {"avgpool": (2048,)},
                     {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
                      "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                      "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                      "Mixed_7c.branch3x3dbl_3b.bn.running_var": (384,),
                      "AuxLogits.conv1.conv.weight": (768, 128, 5, 5),
                      "AuxLogits.fc.weight": (1000, 768), "fc.weight": (1000, 2048)},
                     580, 27_161_264),
    "efficientnet_b1": (EfficientNetB1, "efficientnet_b1-c27df63c.safetensors", 255, {"avgpool": (1280,)},
                        {"features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
                         "features.1.1.block.2.0.weight": (16, 16, 1, 1),
                         "features.2.0.block.0.0.weight": (96, 16, 1, 1),
                         "features.6.4.block.1.0.weight": (1152, 1, 5, 5),
                         "features.7.1.block.3.1.running_var": (320,), "features.8.0.weight": (1280, 320, 1, 1),
                         "classifier.1.weight": (1000, 1280)},
                        508, 7_794_184),
}


def _save(state: dict, path) -> None:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _outputs(net, name, x):
    with torch.no_grad():
        if name == "alexnet":
            return net.feature_maps(x)
        return {"avgpool": net.avgpool_features(x)}


@pytest.mark.parametrize("name", list(NETS))
def test_feature_net_keys_strict_load_and_shapes(name, tmp_path):
    cls, filename, size, shapes, known, n_keys, n_params = NETS[name]
    torch.manual_seed(0)
    net = cls().eval()
    state = net.state_dict()
    # torchvision compatibility: the known key names and shapes, the exact key count and parameter count
    assert {k: tuple(state[k].shape) for k in known if k in state} == known
    assert len(state) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params
    if name == "inception_v3":  # pre-0.4.1 files lack BatchNorm step counters; they must still load
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    _save(state, tmp_path / filename)
    loaded = load_feature_net(name, tmp_path)
    assert list(loaded.state_dict()) == list(net.state_dict())
    assert not loaded.training
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    expected, got, again = _outputs(net, name, x), _outputs(loaded, name, x), _outputs(loaded, name, x)
    for node, shape in shapes.items():
        assert tuple(got[node].shape) == (1, *shape)
        assert torch.equal(got[node], again[node])  # deterministic
        assert torch.allclose(got[node], expected[node], rtol=1e-5, atol=1e-6)  # same weights -> same features
        assert got[node].std() > 0


def test_swav_checkpoint_layout_loads(tmp_path):
    """SwAV's file: 'module.'-prefixed backbone plus training heads, no fc; loads like torch.hub."""
    torch.manual_seed(0)
    net = ResNet50().eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    state["module.prototypes.weight"] = torch.zeros(3000, 128)
    torch.save(state, tmp_path / "swav_800ep_pretrain.pth.tar")
    loaded = load_feature_net("swav", tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.avgpool_features(x), net.avgpool_features(x), rtol=1e-5, atol=1e-6)
    # a missing backbone tensor is an error, not a silently random layer
    del state["module.layer2.0.conv1.weight"]
    torch.save(state, tmp_path / "swav_800ep_pretrain.pth.tar")
    with pytest.raises(WeightsUnavailable, match="layer2.0.conv1.weight"):
        load_feature_net("swav", tmp_path)


def test_wrong_file_is_reported(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(WeightsUnavailable, match="does not match the alexnet architecture"):
        load_feature_net("alexnet", tmp_path)


# --------------------------------------------------------------------------- metric results


def test_absent_weights_give_metric_unavailable(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    for metric, expected_file in [("alexnet2", "alexnet-owt-7be5be79.pth"), ("inception", "inception_v3_google"),
                                  ("effnet", "efficientnet_b1-c27df63c"), ("swav", "swav_800ep_pretrain.pth.tar")]:
        result = feature_metric(metric, images, images, weights_dir=tmp_path)
        assert isinstance(result, MetricUnavailable)
        assert not result.available
        assert expected_file in result.reason and str(tmp_path) in result.reason
        assert str(result).startswith("not available (")
    clip = feature_metric("clip", images, images, weights_dir=tmp_path)
    assert isinstance(clip, MetricUnavailable) and "encoder" in clip.reason
    assert isinstance(feature_metric("alexnet5", images, images), MetricUnavailable)
    with pytest.raises(WeightsUnavailable, match="resnet50-0676ba61"):
        load_feature_net("resnet50", tmp_path)


def test_feature_metric_runs_the_protocol(tmp_path):
    rng = np.random.default_rng(6)
    gt = rng.integers(0, 256, (4, 40, 30, 3), dtype=np.uint8)
    recon = rng.random((4, 48, 48, 3)) * 1.04 - 0.02  # slight overshoot is clamped, as in the reference
    # a pixel "encoder" makes the expected value computable by hand: 256 + clamp, resize to 32, CLIP-normalise
    mean, std = np.array(CLIP_MEAN).reshape(1, 3, 1, 1), np.array(CLIP_STD).reshape(1, 3, 1, 1)

    def by_hand(images):
        pixels = resize(resize(images, 256).clamp(0, 1), 32).numpy()
        return ((pixels - mean) / std).astype(np.float32).reshape(len(images), -1)

    got = feature_metric("clip", gt, recon, encoder=lambda x: x, size=32)
    assert got == pytest.approx(two_way_identification(by_hand(gt), by_hand(recon)), abs=1e-12)

    torch.manual_seed(0)
    torch.save(AlexNet().state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    assert feature_metric("alexnet5", gt, gt, weights_dir=tmp_path) == 1.0  # identical images identify perfectly
    score = feature_metric("alexnet2", gt, recon, weights_dir=tmp_path)
    assert isinstance(score, float) and 0.0 <= score <= 1.0
