from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pillow_dcv  # noqa: F401  (registers the format)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "pillow_dcv" / "samples" / "sample.png"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def roundtrip(im: Image.Image, **options) -> tuple[Image.Image, bytes]:
    buf = io.BytesIO()
    im.save(buf, "DCV", **options)
    data = buf.getvalue()
    out = Image.open(io.BytesIO(data))
    out.load()
    return out, data


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photograph (the bundled sample), 256x192 crop to keep tests fast."""
    with Image.open(SAMPLE) as im:
        return im.convert("RGB").crop((0, 0, 256, 192))


@pytest.fixture(scope="session")
def sample() -> Image.Image:
    with Image.open(SAMPLE) as im:
        return im.convert("RGB")
