"""Decoding never changes the data without a word: 16-bit images scaled (not white), float
and 32-bit pixels refused by name, EXIF orientation applied, transparency and extra frames
said, every resize and crop said; link loops read once; any file name the OS gives; and
images smaller than the architecture takes refused before any model is built."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dann_jax.config import Config
from dann_jax.data import DataError, decode, folders
from dann_jax.data.pair import load_pair
from dann_jax.outputs import predictions_csv
from tests.own_data_test import write_folder


def _read(path, tmp_path, **kw):
    lines = []
    images = folders.read_images(path, cache_dir=tmp_path / "cache", log=lines.append, **kw)
    return images, lines


def _sixteen_bit(folder: Path, values, fmt="PNG"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        Image.fromarray(np.full((16, 16), v, np.uint16)).save(folder / f"{i}.{fmt.lower()}", fmt)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_to_8_bits_and_said(tmp_path, fmt):
    _sixteen_bit(tmp_path / "micro", [0, 257 * 100, 32896, 65535], fmt)
    images, lines = _read(tmp_path / "micro", tmp_path)
    assert images.images[:, 0, 0, 0].tolist() == [0, 100, 128, 255]  # not clipped to white
    assert (images.images[..., 0] == images.images[..., 2]).all()  # grey in all 3 channels
    assert any("4 images 16-bit, scaled to 8 bits (value / 257)" in x for x in lines)
    again, lines = _read(tmp_path / "micro", tmp_path)  # from the cache: said again
    assert again.cached and any("4 images 16-bit" in x for x in lines)


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.random.default_rng(0).random((16, 16), dtype=np.float32), "floating-point pixels"),
        (np.full((16, 16), 1 << 20, np.int32), "32-bit integer pixels"),
    ],
)
def test_float_and_32_bit_tiffs_are_refused_by_name(tmp_path, array, needle):
    write_folder(tmp_path / "t", ["a"], per_class=3, size=(16, 16), flat=True)
    Image.fromarray(array).save(tmp_path / "t" / "instrument.tif")
    with pytest.raises(DataError) as err:
        _read(tmp_path / "t", tmp_path)
    message = str(err.value)
    assert f"1 image in {tmp_path / 't'} hold {needle}" in message
    assert "instrument.tif" in message and "Convert them to 8- or 16-bit" in message


def test_exif_orientation_is_applied_and_said(tmp_path):
    x = np.zeros((8, 12, 3), np.uint8)
    x[0, 0] = 255  # a marker in the stored top-left corner
    exif = Image.Image().getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "p").mkdir()
    Image.fromarray(x).save(tmp_path / "p" / "phone.png", exif=exif.tobytes())
    images, lines = _read(tmp_path / "p", tmp_path)
    assert images.images.shape == (1, 12, 8, 3)  # upright: portrait
    np.testing.assert_array_equal(images.images[0], np.rot90(x, k=-1))
    assert any("1 image turned upright by their EXIF orientation" in x for x in lines)


def test_transparency_and_extra_frames_are_said(tmp_path):
    (tmp_path / "t").mkdir()
    rgba = np.full((16, 16, 4), 200, np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "t" / "opaque.png")
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "t" / "holes.png")
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (30, 220)]
    frames[0].save(tmp_path / "t" / "anim.gif", save_all=True, append_images=frames[1:])
    images, lines = _read(tmp_path / "t", tmp_path)
    note = next(x for x in lines if x.startswith("note: of the images"))
    assert "1 image with transparent pixels" in note  # holes.png only, not opaque.png
    assert "1 image with several frames or pages: the first one used" in note
    assert images.paths[0] == "anim.gif" and images.images[0].max() == 30  # the first frame


def test_every_resize_and_crop_is_said(tmp_path):
    (tmp_path / "r").mkdir()
    for name, size in (("square", (24, 24)), ("wide", (20, 40)), ("exact", (16, 16))):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / "r" / f"{name}.png")
    images, lines = _read(tmp_path / "r", tmp_path, image_size=16)
    assert images.images.shape == (3, 16, 16, 3)
    note = next(x for x in lines if x.startswith("note: of the images"))
    assert "2 images resized (shorter side to 16)" in note
    assert "1 image not square: centre-cropped to 16x16 (the ends of the longer side cut)" in note


def test_a_non_square_npz_resized_for_the_model_says_it_is_cropped(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (20, 20, 30), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(20) % 2, x_test=x[:4],
             y_test=np.arange(4) % 2)  # fmt: skip
    lines = []
    config = Config(source=str(tmp_path / "s.npz"), target=str(tmp_path / "s.npz"),
                    image_size=16, tfds_dir=str(tmp_path / "c"))  # fmt: skip
    load_pair(config, 28, lines.append)
    assert any(
        "30x20 images resized to 16x16 (bilinear; not square: shorter side to the size, then "
        "a centre crop)" in x
        for x in lines
    )


def test_a_link_loop_lists_each_image_once(tmp_path):
    write_folder(tmp_path / "t", ["a"], per_class=4, size=(16, 16), flat=True)
    (tmp_path / "t" / "sub").mkdir()
    (tmp_path / "t" / "sub" / "back").symlink_to(tmp_path / "t")  # a loop
    (tmp_path / "t" / "again").symlink_to(tmp_path / "t" / "sub")  # a second link
    images, _ = _read(tmp_path / "t", tmp_path, unlabelled=True)  # as --predict reads
    assert len(images.paths) == 4 and len(set(images.paths)) == 4
    write_folder(tmp_path / "s", ["x", "y"], per_class=3, size=(16, 16))
    (tmp_path / "s" / "x" / "loop").symlink_to(tmp_path / "s" / "x")
    labelled, _ = _read(tmp_path / "s", tmp_path)
    assert labelled.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_a_dangling_link_in_a_folder_is_named(tmp_path):
    write_folder(tmp_path / "t", ["a"], per_class=3, size=(16, 16), flat=True)
    (tmp_path / "t" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"gone.png is a link to .*nowhere.png, which does not "):
        _read(tmp_path / "t", tmp_path)


def test_names_that_are_not_utf8_are_read_cached_logged_and_written(tmp_path):
    write_folder(tmp_path / "t", ["a"], per_class=2, size=(16, 16), flat=True)
    raw = os.fsencode(tmp_path / "t") + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(f, "PNG")
    images, lines = _read(tmp_path / "t", tmp_path)
    assert "caf\udce9.png" in images.paths  # the OS's bytes, kept
    assert _read(tmp_path / "t", tmp_path)[0].cached
    for line in lines:
        line.encode("utf-8")  # every log line can be printed
    text = predictions_csv(images.paths, ("a", "b"), np.zeros((3, 2), np.float32))
    assert "caf\\xe9.png" in text.splitlines()[1:][-1] or "caf\\xe9.png" in text
    assert decode.printable("caf\udce9.png") == "caf\\xe9.png"


@pytest.mark.parametrize(("arch", "side", "ok"), [("mnist", 8, False), ("mnist", 15, False),
                         ("mnist", 16, True), ("svhn", 8, True)])  # fmt: skip
def test_images_smaller_than_the_architecture_takes_are_refused(tmp_path, arch, side, ok):
    x = np.random.default_rng(0).integers(0, 255, (20, side, side), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(20) % 2, x_test=x[:4],
             y_test=np.arange(4) % 2)  # fmt: skip
    config = Config(source=str(tmp_path / "s.npz"), target=str(tmp_path / "s.npz"), arch=arch,
                    tfds_dir=str(tmp_path / "c"))  # fmt: skip
    if ok:
        assert load_pair(config, 28, lambda _: None).source_train.shape[1] == side
        return
    with pytest.raises(DataError) as err:
        load_pair(config, 28, lambda _: None)
    assert f"The source images are {side}x{side}, but --arch mnist needs images of at least " \
           "16x16" in str(err.value) and "Pass --image-size 16" in str(err.value)  # fmt: skip
    data = load_pair(config.replace(image_size=16), 28, lambda _: None)  # the fix works
    assert data.source_train.shape[1:] == (16, 16, 3)


def test_decode_notes_nothing_for_plain_8_bit_images():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "PNG")
    pixels, notes = decode.decode(buf.getvalue(), None)
    assert pixels.shape == (16, 16, 3) and notes == frozenset()
