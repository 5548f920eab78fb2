"""Issue 11, finding 5: high-bit-depth images are scaled to 8 bits, not clipped; odd modes get a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loftup.backbones import load_image
from loftup.errors import InputError
from loftup.io import rgb_image


def test_16bit_png_ramp_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))  # 0 .. 65535 across
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    rgb = np.asarray(load_image(tmp_path / "ramp16.png"))
    assert rgb.shape == (8, 256, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[0, :, 0], np.rint(ramp[0] / 257.0).astype(np.uint8))
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and rgb[0, 128, 0] == 128
    assert (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()  # monotone, not a wall of 255


def test_16bit_tiff_and_big_endian(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.tif")
    assert np.asarray(load_image(tmp_path / "g16.tif"))[0, :, 0].tolist() == [0, 1, 128, 255]
    big = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    assert np.asarray(rgb_image(big))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_32bit_int_and_float_images():
    wide = Image.fromarray(np.array([[-1000, 0, 1000, 3000]], dtype=np.int32), "I")  # outside 16 bits: stretched
    assert np.asarray(rgb_image(wide))[0, :, 0].tolist() == [0, 64, 128, 255]
    unit = Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32), "F")  # [0, 1]: x 255
    assert np.asarray(rgb_image(unit))[0, :, 0].tolist() == [0, 64, 128, 255]
    hdr = Image.fromarray(np.array([[2.0, 4.0, 6.0]], dtype=np.float32), "F")  # other ranges: stretched
    assert np.asarray(rgb_image(hdr))[0, :, 0].tolist() == [0, 128, 255]
    bad = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), "F")
    with pytest.raises(InputError, match="NaN or infinite"):
        rgb_image(bad, "x.tif")


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "PA", "RGBA", "CMYK", "RGB"])
def test_8bit_modes_convert_as_before(mode):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).convert(mode)
    out = rgb_image(img)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(img.convert("RGB")))


def test_unsupported_mode_is_one_input_error():
    with pytest.raises(InputError, match=r"PIL mode La.*save it as an RGB") as exc:
        rgb_image(Image.new("La", (2, 2)), "odd.png")
    assert "\n" not in str(exc.value)
