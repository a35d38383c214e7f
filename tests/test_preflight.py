"""Bad input caught before training: image preflight and CSV image lists.

Covers: transfer.data.preflight, transfer.data.tables.
"""

import json
import os
import resource
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import transfer
from transfer.data import preflight

# What this file tests does not depend on the Keras backend: run it once.
pytestmark = pytest.mark.backend_independent


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _image(path, mode="RGB", size=(20, 20), value=None, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    if mode == "I;16":
        pixels = np.full(size[::-1], 65535 if value is None else value, "uint16")
        image = Image.fromarray(pixels)
    else:
        image = Image.new(mode, size)
        if value is not None:
            image.paste(value, (0, 0, size[0], size[1]))
        elif mode == "RGB":
            image = Image.fromarray(
                rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            )
    image.save(path, format=fmt)
    return path


def _png_header(width, height):
    """A PNG that claims `width` x `height` pixels in a few dozen bytes."""
    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _jpeg_bomb(path):
    """A real JPEG whose frame header is patched to 60000 x 60000."""
    _image(path, fmt="JPEG")
    data = bytearray(open(path, "rb").read())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    open(path, "wb").write(bytes(data))


@pytest.fixture
def messy(tmp_path):
    """Two classes, good images of every kind, and every kind of bad file."""
    root = tmp_path / "data"
    for i in range(4):
        _image(root / "cat" / f"{i}.png")
        _image(root / "dog" / f"{i}.jpg", fmt="JPEG")
    _image(root / "cat" / "gray.jpg", "L", value=128, fmt="JPEG")
    _image(root / "cat" / "alpha.png", "RGBA", value=(255, 0, 0, 0))
    _image(root / "dog" / "cmyk.jpg", "CMYK", value=(0, 255, 255, 0), fmt="JPEG")
    _image(root / "dog" / "deep.png", "I;16", value=65535)
    _image(root / "dog" / "palette.gif", "P", value=3, fmt="GIF")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "notes.jpg").write_text("not an image")
    _image(root / "dog" / "cut.jpg", fmt="JPEG", size=(64, 64))
    data = (root / "dog" / "cut.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    _jpeg_bomb(root / "dog" / "bomb2.jpg")
    (root / "cat" / "readme.txt").write_text("ignored: not an image extension")
    return root


BAD = {
    os.path.join("cat", "empty.jpg"): "empty file",
    os.path.join("cat", "notes.jpg"): "not an image",
    os.path.join("dog", "cut.jpg"): "truncated",
    os.path.join("dog", "bomb.png"): "bomb",
    os.path.join("dog", "bomb2.jpg"): "bomb",
}


def test_preflight_finds_bad_files_and_counts_conversions(messy):
    report = preflight.check_images(str(messy), verbose=0)
    found = dict(report.bad)
    assert set(found) == set(BAD)
    for name, words in BAD.items():
        assert words in found[name], (name, found[name])
    assert report.converted == {
        "grayscale": 1, "rgba": 1, "cmyk": 1, "16-bit": 1, "palette": 1
    }
    assert set(report.copies) == {os.path.join("dog", "cmyk.jpg"),
                                  os.path.join("dog", "deep.png")}
    summary = report.to_dict()
    assert summary["bad"] == 5 and summary["skipped"] == 0
    with pytest.raises(ValueError, match=r"(?s)5 of 18 image file.*cat/empty.jpg: empty file.*skip_bad_files=True.*Received: 5 bad file"):
        report.raise_for_bad_files()


def test_decompression_bomb_is_refused_fast_with_bounded_memory(tmp_path):
    root = tmp_path / "bombs"
    root.mkdir()
    (root / "a.png").write_bytes(_png_header(100_000, 100_000))  # 10^10 px
    (root / "b.png").write_bytes(_png_header(10_000, 10_000))  # 10^8 px
    _jpeg_bomb(root / "c.jpg")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = preflight.check_images(
        str(root), ["a.png", "b.png", "c.jpg"], verbose=0
    )
    assert time.perf_counter() - started < 2.0
    # Decoding any of them would need gigabytes; the peak did not move.
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 100
    assert [name for name, _ in report.bad] == ["a.png", "b.png", "c.jpg"]
    assert all("bomb" in reason for _, reason in report.bad)
    # A limit of its own: refused from the header, never decoded.
    _image(root / "big.png", size=(40, 40))
    report = preflight.check_images(str(root), ["big.png"], verbose=0,
                                    max_image_pixels=1000)
    assert "40x40 = 1,600 pixels, over max_image_pixels=1,000; refused from its header" in report.bad[0][1]
    with pytest.raises(ValueError, match="Received: max_image_pixels=0"):
        preflight.check_images(str(root), verbose=0, max_image_pixels=0)


def test_preflight_results_are_cached(messy, monkeypatch):
    first = preflight.check_images(str(messy), verbose=0)
    assert first.cache_hits == 0

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a cached file")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_decoding)
        again = preflight.check_images(str(messy), verbose=0)
    assert again.cache_hits == len(again.files) == 18
    assert again.bad == first.bad and again.converted == first.converted
    time.sleep(0.01)
    _image(messy / "cat" / "0.png", size=(24, 24))  # changed: decoded again
    third = preflight.check_images(str(messy), verbose=0)
    assert third.cache_hits == 17


def test_load_image_folder_refuses_or_skips_bad_files(messy, tmp_path):
    with pytest.raises(ValueError, match=r"(?s)5 of 18 image file\(s\).*truncated"):
        transfer.load_image_folder(str(messy), image_size=16, verbose=0)
    train, val, names = transfer.load_image_folder(
        str(messy), image_size=16, batch_size=4, skip_bad_files=True,
        validation_split=0, verbose=0,
    )
    assert names == ["cat", "dog"] and val is None
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in train], strict=True)
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert len(labels) == 13 and images.shape[1:] == (16, 16, 3)
    assert np.isfinite(images).all() and images.max() <= 255
    assert train.transfer_preflight.to_dict()["skipped"] == 5
    # The data folder itself is untouched.
    assert (messy / "cat" / "empty.jpg").exists()
    # Unshuffled, `file_paths` name each example's file in order, in the
    # data folder (not in the preflight view Keras read).
    ordered, _, _ = transfer.load_image_folder(
        str(messy), image_size=16, batch_size=4, skip_bad_files=True,
        validation_split=0, shuffle=False, verbose=0,
    )
    relative = [os.path.relpath(p, messy) for p in ordered.file_paths]
    assert all(os.path.isfile(p) for p in ordered.file_paths)
    assert len(relative) == 13 and not set(relative) & set(BAD)
    labels = np.concatenate([y.numpy() for _, y in ordered])
    assert [names[i] for i in labels] == [p.split(os.sep)[0] for p in relative]


def test_converted_pixels_are_right(tmp_path):
    root = tmp_path / "data"
    _image(root / "a" / "deep.png", "I;16", value=65535)
    _image(root / "a" / "gray.png", "L", value=100)
    _image(root / "b" / "cmyk.jpg", "CMYK", value=(0, 255, 255, 0), fmt="JPEG")
    _image(root / "b" / "alpha.png", "RGBA", value=(10, 20, 30, 0))
    train, _, _ = transfer.load_image_folder(
        str(root), image_size=8, validation_split=0, batch_size=8, verbose=0
    )
    # What the model sees: every image as 8-bit RGB values.
    seen = sorted(
        tuple(int(round(v)) for v in x.numpy()[0, 0]) for x, _ in train.unbatch()
    )
    assert seen[0] == (10, 20, 30)  # RGBA: alpha dropped
    assert seen[1] == (100, 100, 100)  # grayscale
    assert seen[-1] == (255, 255, 255)  # 16-bit 65535, scaled, not clipped
    red = seen[2]  # CMYK (0, 255, 255, 0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert set(train.transfer_preflight.copies) == {
        os.path.join("a", "deep.png"), os.path.join("b", "cmyk.jpg")
    }


def test_empty_and_single_class_folders(tmp_path):
    root = tmp_path / "data"
    _image(root / "a" / "1.png")
    _image(root / "b" / "1.png")
    (root / "b" / "2.jpg").write_text("junk")
    (root / "c").mkdir()
    with pytest.raises(ValueError, match=r"\['c'\].*hold no images"):
        transfer.load_image_folder(str(root), image_size=8, verbose=0)
    (root / "c").rmdir()
    os.remove(root / "b" / "1.png")
    with pytest.raises(ValueError, match=r"\['b'\] .*no usable images once the 1 bad"):
        transfer.load_image_folder(str(root), image_size=8, verbose=0,
                                   skip_bad_files=True)
    solo = tmp_path / "solo"
    _image(solo / "only" / "1.png")
    with pytest.raises(ValueError, match="at least two"):
        transfer.load_image_folder(str(solo), image_size=8, verbose=0)


def test_unicode_file_and_class_names(tmp_path):
    root = tmp_path / "données"
    for name in ("café", "日本", "ñandú"):
        _image(root / name / "ü ñ 画像.png")
        _image(root / name / "2.png")
    (root / "日本" / "空.jpg").write_bytes(b"")
    train, val, names = transfer.load_image_folder(
        str(root), image_size=8, batch_size=2, validation_split=0,
        skip_bad_files=True, verbose=0,
    )
    assert names == sorted(["café", "日本", "ñandú"])
    assert sum(len(y) for _, y in train) == 6
    assert train.transfer_preflight.bad[0][0] == os.path.join("日本", "空.jpg")


def test_skipped_files_are_listed_in_the_manifest(messy, tmp_path, tiny_model):
    train, val, names = transfer.load_image_folder(
        str(messy), image_size=32, batch_size=4, skip_bad_files=True, verbose=0
    )
    run_dir = tmp_path / "run"
    transfer.fit_recipe(tiny_model, [transfer.Stage("h", 1, 1e-3)], train,
                        validation_data=val, run_dir=str(run_dir), verbose=0)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["class_names"] == ["cat", "dog"]
    data = manifest["data"]
    assert data["skipped"] == 5 and data["bad"] == 5
    assert {item["file"] for item in data["bad_files"]} == set(BAD)
    assert data["converted"]["cmyk"] == 1


def _csv(path, rows, header=("file", "label")):
    lines = [",".join(header)] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_image_csv_loads(tmp_path):
    root = tmp_path / "data"
    rows = []
    for i in range(6):
        _image(root / "imgs" / f"{i}.png")
        rows.append((f"imgs/{i}.png", "cat" if i % 2 else "dög"))
    _image(root / "imgs" / "gray.png", "L", value=9)
    rows.append(("imgs/gray.png", "cat"))
    path = _csv(root / "labels.csv", rows)
    train, val, names = transfer.load_image_csv(path, image_size=8, batch_size=4,
                                                validation_split=0.3)
    assert names == ["cat", "dög"]
    assert train.class_names == names
    counts = sum(len(y) for _, y in train), sum(len(y) for _, y in val)
    assert counts == (5, 2)
    x, y = next(iter(train))
    assert tuple(x.shape[1:]) == (8, 8, 3) and set(y.numpy()) <= {0, 1}
    assert train.transfer_preflight.converted == {"grayscale": 1}


def test_image_csv_refuses_bad_rows_with_row_numbers(tmp_path):
    root = tmp_path / "data"
    _image(root / "a.png")
    _image(root / "b.png")
    _image(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", root / "link.png")
    os.symlink(root / "a.png", root / "inside.png")  # inside: fine
    rows = [
        ("a.png", "cat"),            # row 2
        ("b.png", "dog"),            # row 3
        ("../secret.png", "cat"),    # row 4
        (str(tmp_path / "secret.png"), "cat"),  # row 5
        ("link.png", "cat"),         # row 6
        ("missing.png", "dog"),      # row 7
        ("a.png", "dog"),            # row 8: duplicate
        ("inside.png", "bird"),      # row 9: unknown class
        ("sub/../a.png", "cat"),     # row 10
    ]
    path = _csv(root / "labels.csv", rows)
    with pytest.raises(ValueError) as info:
        transfer.load_image_csv(path, image_size=8, class_names=["cat", "dog"])
    text = str(info.value)
    assert "row 4: '../secret.png' is a '..' path" in text
    assert "row 5:" in text and "is an absolute path" in text
    assert "row 6: 'link.png' is a link that resolves outside the data root" in text
    assert "missing file (1): row 7: 'missing.png'" in text
    assert "row 8: 'a.png' is also in row 2" in text
    assert "unknown class (1): row 9: 'bird'" in text
    assert "row 10: 'sub/../a.png' is a '..' path" in text
    assert "Received: 7 bad row(s)" in text
    with pytest.raises(ValueError, match=r"no column\(s\) \['label'\].*Received: columns \['file', 'class'\]"):
        transfer.load_image_csv(_csv(root / "cols.csv", rows, ("file", "class")),
                                image_size=8)


def test_image_csv_bad_images_give_rows(tmp_path):
    root = tmp_path / "data"
    _image(root / "a.png")
    _image(root / "b.png")
    _image(root / "c.png")
    (root / "broken.png").write_text("text")
    path = _csv(root / "labels.csv", [("a.png", "x"), ("b.png", "y"),
                                      ("broken.png", "y"), ("c.png", "y")])
    with pytest.raises(ValueError, match=r"row 4 'broken.png': not an image"):
        transfer.load_image_csv(path, image_size=8)
    train, _, _ = transfer.load_image_csv(path, image_size=8, skip_bad_files=True,
                                          validation_split=0)
    assert sum(len(y) for _, y in train) == 3
    one = _csv(root / "one.csv", [("a.png", "x"), ("b.png", "x")])
    with pytest.raises(ValueError, match="at least two"):
        transfer.load_image_csv(one, image_size=8)
