"""Pillow plugin for the DCV learned image format.

Reading is lazy: ``Image.open`` reads the header and metadata chunks only; the tiles are decoded
by :class:`DcvDecoder` when the pixels are needed. Saving validates every option before the first
byte is written.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile

from . import codec

# 0.73 bpp and 34.57 dB on Kodak with dcv-ms2-s30 (effort 4), near where the old default (4) was before the
# quality ladder moved down to ~0.1-1.4 bpp (session 8)
DEFAULT_QUALITY = 6
EXIF_HEADER = b"Exif\x00\x00"

# Modes converted before encoding; every other mode not in codec.MODES is refused.
_CONVERSIONS = {"1": "L", "P": None, "PA": "RGBA", "RGBX": "RGB", "RGBa": "RGBA", "La": "LA", "YCbCr": "RGB"}


def _accept(prefix: bytes) -> bool:
    return prefix.startswith(codec.SIGNATURE)


class DcvImageFile(ImageFile.ImageFile):
    format = "DCV"
    format_description = "DCV learned image codec"
    n_frames = 1
    is_animated = False

    def _open(self) -> None:
        try:
            info = codec.read_info(self.fp)
        except codec.NotDCVError as e:
            raise SyntaxError(str(e)) from None
        self._dcv = info
        self._size = (info.width, info.height)
        self._mode = info.mode
        self.info["quality"] = info.quality
        self.info["model"] = info.model_id
        if info.icc_profile is not None:
            self.info["icc_profile"] = info.icc_profile
        if info.exif is not None:
            self.info["exif"] = EXIF_HEADER + info.exif
        if info.xmp is not None:
            self.info["xmp"] = info.xmp
        self.tile = [ImageFile._Tile("DCV", (0, 0) + self.size, 0, (info,))]

    def seek(self, frame: int) -> None:
        self._seek_check(frame)

    def tell(self) -> int:
        return 0

    def verify(self) -> None:
        """Check the structure and every CRC without decoding."""
        if self.fp is None:
            raise RuntimeError("verify must be called directly after open")
        self.fp.seek(0)
        codec.verify(self.fp)
        if self._exclusive_fp:
            self.fp.close()
        self.fp = None


class DcvDecoder(ImageFile.PyDecoder):
    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        assert self.fd is not None
        (info,) = self.args
        pixels = codec.decode(self.fd, info)
        self.set_as_raw(memoryview(np.ascontiguousarray(pixels)).cast("B"), self.mode)  # not copied to bytes
        return -1, 0


def _exif_bytes(exif: Any) -> bytes | None:
    """Accept Image.Exif, JPEG-style b"Exif\\0\\0" + TIFF, or bare TIFF bytes; store TIFF bytes."""
    if exif is None:
        return None
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    if not isinstance(exif, (bytes, bytearray)):
        raise ValueError("exif must be bytes or an Image.Exif")
    exif = bytes(exif)
    if exif.startswith(EXIF_HEADER):
        exif = exif[len(EXIF_HEADER) :]
    return exif or None


def _metadata_bytes(name: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{name} must be bytes")
    return bytes(value) or None


def _encodable(im: Image.Image) -> Image.Image:
    if im.mode in codec.MODES:
        return im
    if im.mode not in _CONVERSIONS:
        raise ValueError(f"cannot write mode {im.mode} as DCV (16-bit, float and CMYK images are not supported)")
    target = _CONVERSIONS[im.mode]
    if target is None:  # palette: keep transparency if there is any
        target = "RGBA" if im.has_transparency_data else "RGB"
    return im.convert(target)


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    info = im.encoderinfo
    quality = codec.validate_quality(info.get("quality", DEFAULT_QUALITY))
    icc_profile = _metadata_bytes("icc_profile", info.get("icc_profile", im.info.get("icc_profile")))
    exif = _exif_bytes(info.get("exif", im.info.get("exif")))
    xmp = _metadata_bytes("xmp", info.get("xmp", im.info.get("xmp")))
    effort = codec.validate_effort(info.get("effort", codec.DEFAULT_EFFORT))
    tile_size = info.get("tile_size", codec.DEFAULT_TILE_SIZE)
    if isinstance(tile_size, bool) or not isinstance(tile_size, int):
        raise ValueError("tile_size must be an integer")
    frame = _encodable(im)
    frame.load()
    pixels = np.asarray(frame).reshape(frame.height, frame.width, len(frame.mode))
    data = codec.encode(pixels, frame.mode, quality, effort=effort, icc_profile=icc_profile, exif=exif, xmp=xmp,
                        tile_size=tile_size)
    fp.write(data)


def _save_all(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    if getattr(im, "n_frames", 1) > 1 or im.encoderinfo.get("append_images"):
        raise ValueError("DCV stores a single image; it cannot save several frames")
    _save(im, fp, filename)


Image.register_open(DcvImageFile.format, DcvImageFile, _accept)
Image.register_decoder("DCV", DcvDecoder)
Image.register_save(DcvImageFile.format, _save)
Image.register_save_all(DcvImageFile.format, _save_all)
Image.register_extension(DcvImageFile.format, ".dcv")
Image.register_mime(DcvImageFile.format, "image/x-dcv")
