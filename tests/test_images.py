"""First frames are checked for real with Pillow, whatever their names say."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.images import ImageRejected, prepare_first_frame
from tests.conftest import make_image


def test_a_png_within_limits_is_sent_unchanged() -> None:
    data = make_image(640, 360)
    frame = prepare_first_frame(data)
    assert frame.data == data and frame.mime == "image/png" and frame.converted_from is None


def test_webp_is_converted_to_jpeg() -> None:
    frame = prepare_first_frame(make_image(640, 480, "WEBP"))
    assert frame.mime == "image/jpeg" and frame.converted_from == "WEBP"
    assert Image.open(io.BytesIO(frame.data)).format == "JPEG"


def test_transparent_webp_keeps_its_alpha_as_png() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (400, 400), (0, 0, 0, 0)).save(out, "WEBP", lossless=True)
    assert prepare_first_frame(out.getvalue()).mime == "image/png"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (make_image(299, 600), "at least 300"),
        (make_image(300, 751), "too elongated"),
        (make_image(1, 5000), "at least 300"),
        (make_image(400, 400, "GIF"), "GIF image"),
        (b"%PDF-1.4 not an image", "not a readable image"),
        (make_image(640, 480)[:200], "not a readable image"),
        (b"x" * (21 * 1024 * 1024), "too large"),
    ],
    ids=["small", "elongated", "strip", "gif", "pdf", "truncated", "huge"],
)
def test_bad_images_are_refused_with_what_to_change(data: bytes, message: str) -> None:
    with pytest.raises(ImageRejected, match=message):
        prepare_first_frame(data)


def test_a_decompression_bomb_is_an_error_not_a_warning() -> None:
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")  # tiny file, 400 million pixels
    with pytest.raises(ImageRejected, match="too many"):
        prepare_first_frame(out.getvalue())
