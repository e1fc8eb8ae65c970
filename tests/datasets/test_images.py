"""``datasets.images``: the decoding policy (EXIF orientation, 16-bit, modes), the start-up probe
(truncation signs without false alarms) and the load-time replacement of unreadable images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from data_faults import corrupt_png_data, exif_rotated_jpeg, noise_image, png16, save_jpeg, truncate

from datasets.images import ImageReadError, ImageSource, decode_image, probe_image
from datasets.problems import DatasetError


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    displayed = np.zeros((32, 64, 3), dtype=np.uint8)  # 64 wide, 32 high; red on the left quarter
    displayed[:, :16] = (255, 0, 0)
    path = exif_rotated_jpeg(tmp_path / "phone.jpg", displayed, orientation=6)
    with PIL.Image.open(path) as raw:
        assert raw.size == (32, 64)  # stored rotated: what the official convert("RGB") trains on
    info = probe_image(path)
    assert (info.width, info.height, info.stored_size, info.orientation) == (64, 32, (32, 64), 6)
    assert "exif-rotated" in info.notes
    image = np.asarray(decode_image(path))
    assert image.shape == (32, 64, 3)
    assert image[:, :16, 0].mean() > 240 and image[:, 16:, 0].mean() < 15  # red where the boxes say


def test_16_bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = png16(tmp_path / "depth.png", values)
    saturated = np.asarray(PIL.Image.open(path).convert("RGB"))[0, :, 0]
    assert saturated.tolist() == [0, 255, 255, 255]  # what PIL alone gives: white above 255
    image = np.asarray(decode_image(path))
    assert image.shape == (4, 4, 3)
    assert image[0, :, 0].tolist() == [0, 1, 128, 255] and (image[..., 0] == image[..., 2]).all()
    assert {"16-bit", "grayscale"} <= set(probe_image(path).notes)


def test_mode_policy(tmp_path: Path) -> None:
    rgb = noise_image(8, 8)
    rgba = np.concatenate([rgb, np.zeros((8, 8, 1), np.uint8)], axis=2)  # fully transparent
    PIL.Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "rgba.png")), rgb)  # alpha dropped, colours kept
    PIL.Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    palette = np.asarray(PIL.Image.open(tmp_path / "p.png").convert("RGB"))
    assert np.array_equal(np.asarray(decode_image(tmp_path / "p.png")), palette)
    PIL.Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "l.png")), np.repeat(rgb[..., :1], 3, axis=2))
    PIL.Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = np.asarray(decode_image(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert probe_image(tmp_path / "cmyk.jpg").notes == ("cmyk",)
    PIL.Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tif")
    assert "mode F" in probe_image(tmp_path / "float.tif").error


def test_truncation_signs_and_no_false_alarm(tmp_path: Path) -> None:
    jpeg = truncate(save_jpeg(tmp_path / "cut.jpg", noise_image(64, 64)))
    with pytest.raises(OSError, match="truncated"):  # what the official loader meets mid-epoch
        PIL.Image.open(jpeg).convert("RGB")
    assert probe_image(jpeg).error == "is truncated (no JPEG end-of-image marker)"
    png = tmp_path / "cut.png"
    PIL.Image.fromarray(noise_image(64, 64)).save(png)
    assert probe_image(truncate(png, keep=0.9)).error.startswith("is truncated")
    trailing = save_jpeg(tmp_path / "trailing.jpg", noise_image(64, 64))
    trailing.write_bytes(trailing.read_bytes() + b"\0" * 5000)  # decodes fine: not flagged
    assert probe_image(trailing).error is None
    corrupt = tmp_path / "corrupt.png"
    PIL.Image.fromarray(noise_image(64, 64)).save(corrupt)
    corrupt_png_data(corrupt)
    assert probe_image(corrupt).error is None  # header check: structure intact
    assert "cannot be decoded" in probe_image(corrupt, full=True).error  # --check_images full
    assert probe_image(tmp_path / "none.png").error == "is not found"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert probe_image(tmp_path / "empty.jpg").error == "is empty"
    with pytest.raises(ImageReadError, match="corrupt.png: cannot be decoded"):
        decode_image(corrupt)


def test_image_source_replaces_unreadable_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = []
    for k in range(4):
        path = tmp_path / f"{k}.png"
        PIL.Image.fromarray(noise_image(8, 8, seed=k)).save(path)
        paths.append(str(path))
    corrupt_png_data(Path(paths[1]))
    source = ImageSource(paths, max_bad_images=0.25)  # 1 of 4
    used, image = source.load(1)
    assert used == 2 and np.array_equal(np.asarray(image), noise_image(8, 8, seed=2))  # the next readable one
    assert "warning: skipping" in capsys.readouterr().out and paths[1] in source.bad[1]
    assert source.load(1)[0] == 2  # the same answer again, without a second warning
    assert capsys.readouterr().out == ""
    corrupt_png_data(Path(paths[3]))
    with pytest.raises(DatasetError, match=r"2 unreadable images, more than the 1") as err:
        source.load(3)
    assert paths[1] in str(err.value) and paths[3] in str(err.value)
