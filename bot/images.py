"""First-frame images: checked for real with Pillow and made into something the provider accepts."""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # what we agree to read at all
MAX_SEND_BYTES = 10 * 1024 * 1024  # Kling's safe size for a first frame
MIN_SIDE = 300
MAX_RATIO = 2.5
MAX_PIXELS = 40_000_000  # far above any camera photo; beyond it is a decompression bomb


class ImageRejected(ValueError):
    """The image cannot be a first frame; the message tells the member what to change."""


@dataclass(frozen=True, slots=True)
class FirstFrame:
    """An image ready to send: JPEG or PNG bytes within the provider's limits."""

    data: bytes
    mime: str
    width: int
    height: int
    converted_from: str | None  # the original format when we had to convert

    @property
    def base64(self) -> str:
        """Raw Base64 without a `data:` prefix, as the provider wants it."""
        return base64.b64encode(self.data).decode("ascii")


def prepare_first_frame(data: bytes) -> FirstFrame:
    """Check an uploaded image and convert it to PNG or JPEG where needed; CPU-bound, run it in a thread."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageRejected(f"The image is too large ({_mib(len(data))}); send one under {_mib(MAX_SEND_BYTES)}.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected(f"That file is a {fmt} image; send a JPG, PNG or WebP picture.")
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageRejected(f"The image is {width}x{height} pixels, too many; send a smaller one.")
            _check_shape(width, height)
            image.load()  # decodes everything, so a truncated file fails here, not at the provider
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected("The image has far too many pixels; send a smaller one.") from None
        except ImageRejected:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ImageRejected("That file is not a readable image; send a JPG, PNG or WebP picture.") from None
    animated = getattr(image, "is_animated", False)
    if fmt in ("JPEG", "PNG") and not animated and len(data) <= MAX_SEND_BYTES:
        return FirstFrame(data, f"image/{fmt.lower()}", width, height, None)
    return _convert(image, fmt)


def _check_shape(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise ImageRejected(f"The image is {width}x{height}; each side must be at least {MIN_SIDE} pixels.")
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise ImageRejected(
            f"The image is {width}x{height}, too elongated; its sides may differ by at most 1:{MAX_RATIO:g}."
        )


def _convert(image: Image.Image, original: str) -> FirstFrame:
    # Keep transparency in PNG; photos go to JPEG, which stays far smaller.
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    out = io.BytesIO()
    if has_alpha:
        image.convert("RGBA").save(out, "PNG", optimize=True)
        mime = "image/png"
    else:
        image.convert("RGB").save(out, "JPEG", quality=92)
        mime = "image/jpeg"
    if out.tell() > MAX_SEND_BYTES:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=80)
        mime = "image/jpeg"
    if out.tell() > MAX_SEND_BYTES:
        raise ImageRejected(f"The image is too large even compressed; send one under {_mib(MAX_SEND_BYTES)}.")
    return FirstFrame(out.getvalue(), mime, image.width, image.height, original)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"
