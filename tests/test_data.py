"""Market-1501 parsing, junk rules, image loading errors and the uint8 cache."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from reid_core.data import (DatasetError, ImageError, list_split, load_image, load_split,
                            parse_market_name, relabel, to_array, to_tensor, to_uint8)


def _jpeg_bytes(size=(32, 64), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _noisy_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_parse_market_name():
    assert parse_market_name("0001_c1s1_000000_00.jpg") == (1, 0)
    assert parse_market_name("/a/b/0843_c2s3_123456_07.jpg") == (843, 1)
    assert parse_market_name("-1_c3s1_000000_00.jpg") == (-1, 2)
    assert parse_market_name("0000_c6s1_000000_00.jpg") == (0, 5)
    with pytest.raises(DatasetError, match="person.jpg"):
        parse_market_name("person.jpg")
    with pytest.raises(DatasetError, match="camera 0"):
        parse_market_name("0001_c0s1_000000_00.jpg")


def test_splits_and_junk_rules(synthetic_market):
    train = list_split(synthetic_market, "train")
    gallery = list_split(synthetic_market, "gallery")
    query = list_split(synthetic_market, "query")
    assert len(train) == 8 * 2 * 3 and {s.pid for s in train} == set(range(1, 9))
    assert all(s.pid != -1 for s in gallery), "junk (-1) must be dropped"
    assert any(s.pid == 0 for s in gallery), "distractors (0000) stay in the gallery"
    assert len(query) == 4 * 2 and {s.camid for s in query} == {0, 1}
    assert [s.path for s in train] == sorted(s.path for s in train)


def test_wrong_folder_layouts(tmp_path):
    with pytest.raises(DatasetError, match="bounding_box_train"):
        list_split(tmp_path, "train")
    (tmp_path / "bounding_box_train").mkdir()
    with pytest.raises(DatasetError, match="no .jpg"):
        list_split(tmp_path, "train")
    (tmp_path / "bounding_box_train" / "holiday.jpg").write_bytes(_jpeg_bytes())
    with pytest.raises(DatasetError, match="holiday.jpg"):
        list_split(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        list_split(tmp_path, "validation")


def test_unreadable_image_is_named(tmp_path):
    folder = tmp_path / "bounding_box_train"
    folder.mkdir()
    (folder / "0001_c1s1_000000_00.jpg").write_bytes(_jpeg_bytes())
    (folder / "0001_c2s1_000001_00.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(DatasetError, match="0001_c2s1_000001_00.jpg"):
        load_split(tmp_path, "train", (16, 8), progress=False, use_cache=False)


def test_cache_roundtrip(synthetic_market):
    a = load_split(synthetic_market, "train", (16, 8), progress=False)
    b = load_split(synthetic_market, "train", (16, 8), progress=False)  # from the .npz cache
    assert a.images.shape == (48, 16, 8, 3) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    labels, uniq = relabel(a.pids)
    assert labels.min() == 0 and labels.max() == 7 and (uniq[labels] == a.pids).all()


@pytest.mark.parametrize("make, message", [
    (lambda: b"GIF89a nonsense", "not an image"),
    (lambda: _jpeg_bytes()[:200], "damaged or truncated"),
    (lambda: _noisy_jpeg()[:-400], "damaged or truncated"),
    (lambda: Image.new("RGB", (1, 1)), "too small"),
    (lambda: None, "no image"),
    (lambda: "/no/such/file.jpg", "not found"),
    (lambda: np.zeros((4, 4, 7), np.uint8), "not an image"),
])
def test_bad_images_get_plain_errors(make, message):
    with pytest.raises(ImageError, match=message):
        load_image(make())


def test_huge_image_is_refused_before_decoding():
    img = Image.new("RGB", (12_000, 11_000))  # lazily sized: no pixels are touched by the check
    with pytest.raises(ImageError, match="Mpixel"):
        load_image(img)


def test_decompression_bomb_header_is_a_plain_error():
    buf = io.BytesIO()
    Image.new("1", (20_000, 10_000)).save(buf, "PNG")  # 200 Mpixel header, a few kB of file
    with pytest.raises(ImageError, match="too large"):
        load_image(buf.getvalue())


def test_modes_and_orientation_are_normalised():
    rgba = Image.new("RGBA", (32, 64), (255, 0, 0, 0))  # fully transparent -> white
    assert load_image(rgba).getpixel((5, 5)) == (255, 255, 255)
    gray = Image.new("L", (32, 64), 77)
    assert load_image(gray).mode == "RGB" and load_image(gray).getpixel((0, 0)) == (77, 77, 77)
    landscape = Image.new("RGB", (300, 100), (0, 200, 0))
    arr = to_array(load_image(landscape), (64, 32))
    assert arr.shape == (64, 32, 3)
    assert tuple(arr[32, 16]) == (0, 200, 0)  # the picture is padded, not squashed away


def test_tensor_conversions_roundtrip():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 16, 8, 3), dtype=np.uint8)
    x = to_tensor(u8)
    assert x.shape == (3, 3, 16, 8) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), u8)
