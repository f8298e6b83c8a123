"""PNG layouts that PIL reads other than they look: 16-bit colour cut to 8 bits, masks in alpha."""
import struct
import zlib

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")

from refmatch.data.folder import read_image, read_mask  # noqa: E402


def write_raw_png(path, array, colour_type):
    """A 16-bit PNG that PIL cannot write: [H, W] grey (type 0), [H, W, 2] grey + alpha (4),
    [H, W, 3] RGB (2) or [H, W, 4] RGBA (6)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = array.shape[:2]
    rows = b"".join(b"\x00" + np.ascontiguousarray(row, dtype=">u2").tobytes() for row in array)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def twelve_bit_ramp():
    return (np.arange(64, dtype=np.uint16).reshape(8, 8) * 64) % 4096  # 12-bit values, 64 levels


def lung_mask():
    """A 6 x 6 0/255 mask with a 3 x 3 lung."""
    lung = np.zeros((6, 6), dtype=np.uint8)
    lung[1:4, 2:5] = 255
    return lung


def test_16_bit_grey_keeps_every_level(tmp_path):
    values = twelve_bit_ramp()
    write_raw_png(tmp_path / "grey.png", values, 0)
    assert torch.equal(read_image(tmp_path / "grey.png")[0], torch.from_numpy(values / 65535.0).float())


@pytest.mark.parametrize("colour_type, channels, kind", [(2, 3, "RGB"), (4, 2, "grey \\+ alpha"), (6, 4, "RGBA")])
def test_16_bit_colour_or_alpha_reads_at_8_bits_and_such_masks_are_refused(tmp_path, colour_type, channels, kind):
    """PIL reads these at 8 bits: an image at full range loses only precision (12-bit data in one
    reads dark, which the commands name: test_folder_classes), but a mask's class indices below
    256 would all read 0."""
    from refmatch.recipes.data_setup import dark_images

    full_range = twelve_bit_ramp() * 16 + 15  # 16-bit values whose high byte is the 12-bit one's top 8 bits
    pixels = np.repeat(full_range[..., None], channels, axis=2)
    if channels in (2, 4):
        pixels[..., -1] = 65535  # opaque
    write_raw_png(tmp_path / "xray.png", pixels, colour_type)
    image = read_image(tmp_path / "xray.png")
    assert torch.equal(image[0], torch.from_numpy(full_range // 256 / 255.0).float())
    pixels[..., :channels - (channels in (2, 4))] = twelve_bit_ramp()[..., None]  # 12-bit data: 16 levels left
    write_raw_png(tmp_path / "dark.png", pixels, colour_type)
    assert dark_images(read_image(tmp_path / "dark.png")[None], ["dark.png"]) == ["dark.png"]
    with pytest.raises(ValueError, match=f"xray.png is a 16-bit {kind} mask, which PIL reads cut to 8 bits "
                                         r"\(class indices below 256 to 0\)"):
        read_mask(tmp_path / "xray.png", 2)


def save_layers(path, layers, mode):
    """The [H, W] uint8 ``layers`` as one PNG of PIL ``mode``, its channels in order."""
    from PIL import Image

    Image.fromarray(np.stack(layers, axis=2), mode).save(path)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_a_mask_in_the_alpha_channel_alone_is_refused(tmp_path, mode):
    lung = lung_mask()
    grey = np.full_like(lung, 255)  # an annotation tool's white layer, the lung in its alpha
    save_layers(tmp_path / "alpha.png", [grey] * (len(mode) - 1) + [lung], mode)
    with pytest.raises(ValueError, match=r"alpha.png marks its regions in the alpha channel alone "
                                         r"\(grey 255 everywhere, alpha 0, 255\)"):
        read_mask(tmp_path / "alpha.png", 2)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_a_mask_with_alpha_reads_its_grey_values(tmp_path, mode):
    lung = lung_mask()
    save_layers(tmp_path / "layer.png", [lung] * len(mode), mode)  # a transparent background: alpha as the grey
    assert torch.equal(read_mask(tmp_path / "layer.png", 2), torch.from_numpy(lung // 255).long())
    save_layers(tmp_path / "opaque.png", [lung] * (len(mode) - 1) + [np.full_like(lung, 255)], mode)
    assert torch.equal(read_mask(tmp_path / "opaque.png", 2), torch.from_numpy(lung // 255).long())


def test_an_image_past_pils_pixel_limit_is_named(tmp_path, monkeypatch):
    """A decompression bomb (a small PNG of a huge image) raised PIL's own error, not refmatch's."""
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels are past twice the limit
    with pytest.raises(ValueError, match=r"cannot read .*bomb\.png: Image size \(1600 pixels\) exceeds limit"):
        read_image(tmp_path / "bomb.png")
