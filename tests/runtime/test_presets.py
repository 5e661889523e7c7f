import io

import numpy as np
import pytest
import torch
from PIL import Image

from dogbreed.model import eval_preset
from dogbreed.runtime.presets import EvalPreset, ImageDecodeError, TrainPreset, load_image


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_resnet50_preset_matches_the_v2_weights():
    p = eval_preset("resnet50")
    assert (p.crop_size, p.resize_size, p.interpolation) == (224, 232, "bilinear")
    assert p.mean == (0.485, 0.456, 0.406)
    assert eval_preset("resnet50", 112).resize_size == 116  # same resize/crop ratio


def test_eval_preset_shape_and_normalization():
    out = EvalPreset(crop_size=32, resize_size=36)(Image.new("RGB", (80, 50), (124, 116, 104)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.abs().max() < 0.02  # ImageNet's mean colour normalizes to about zero


def test_train_preset_is_random_but_seedable():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    t = TrainPreset(crop_size=32)
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(0)
    assert torch.equal(a, t(img))
    assert not torch.equal(a, t(img))


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_any_mode_becomes_rgb(mode):
    if mode == "I;16":
        img = Image.fromarray(np.full((10, 12), 65535, dtype=np.uint16))
    else:
        img = Image.new(mode, (12, 10))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (12, 10)
    if mode == "I;16":
        assert out.getpixel((0, 0)) == (255, 255, 255)  # scaled from 16 bits, not clipped noise


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(_encode(img)).getpixel((0, 0)) == (255, 255, 255)


def test_decompression_bomb_is_refused_before_decoding():
    data = _encode(Image.new("L", (2000, 2000)))
    with pytest.raises(ImageDecodeError, match="4000000 pixels is over the limit of 1000000"):
        load_image(data, max_pixels=1_000_000)


def test_an_elongated_image_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match=r"1x8000 is too elongated to classify \(aspect ratio over 100:1\)"):
        load_image(_encode(Image.new("L", (1, 8000))))
    assert load_image(_encode(Image.new("L", (100, 1)))).size == (100, 1)  # 100:1 is still a picture


@pytest.mark.parametrize("data, match", [
    (b"", r"image: empty \(0 bytes\)"),
    (b"hello, not an image", "not an image or an unsupported format"),
])
def test_bad_bytes(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        load_image(data)


def test_a_decode_error_carries_its_source_and_reason(tmp_path):
    with pytest.raises(ImageDecodeError) as caught:
        load_image(b"", name="upload.jpg")
    assert (caught.value.source, caught.value.reason, str(caught.value)) == (
        "upload.jpg", "empty (0 bytes)", "upload.jpg: empty (0 bytes)")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageDecodeError) as caught:
        load_image(tmp_path / "x.png")
    assert caught.value.source == str(tmp_path / "x.png") and caught.value.reason.startswith("cannot decode")


def test_truncated_jpeg_is_an_error():
    data = _encode(Image.new("RGB", (64, 64), "blue"), "JPEG")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_image(data[: len(data) // 2])


def test_large_jpeg_decodes_at_reduced_scale_for_eval(samples):
    big = max(samples.glob("*.jpg"), key=lambda p: p.stat().st_size)
    full = load_image(big)
    small = load_image(big, min_side=232)
    assert min(small.size) >= 232 and small.size[0] < full.size[0]
    preset = EvalPreset()
    diff = (preset(full) - preset(small)).abs().mean()
    assert diff < 0.05  # the same picture to the network
