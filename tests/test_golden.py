"""Golden files pin the format and the model: a change that breaks them must be deliberate
(bump the format or model version and regenerate with fixtures/make_fixtures.py)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from pillow_dcv import codec

FIXTURES = ROOT / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_file_decodes_to_pinned_pixels(name: str) -> None:
    expected = EXPECTED[name]
    data = (FIXTURES / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected["file_sha256"]
    with Image.open(FIXTURES / name) as im:
        im.verify()
    with open(FIXTURES / name, "rb") as fp:
        assert codec.describe(codec.read_info(fp))["header"]["orientation"] == expected["orientation"]
    parsed = codec.container.parse(data)
    chunk = "fILT" if parsed.post_filter is not None else "fILC" if parsed.class_filter is not None else None
    assert chunk == expected["filter"]
    with Image.open(FIXTURES / name) as im:
        assert im.mode == expected["mode"] and list(im.size) == expected["size"]
        pixels = np.asarray(im)
    # Entropy decoding is exact everywhere (the decoder checks the symbol CRC). The synthesis is float:
    # on another CPU a pixel could in principle round differently, and this test would say so.
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"], f"{name}: pixels changed"


def test_golden_metadata() -> None:
    with Image.open(FIXTURES / "tiles_meta_q8.dcv") as im:
        assert im.info["icc_profile"] == b"icc-test" and im.info["xmp"] == b"<x/>"
        assert im.getexif()[0x0112] == 3
    with Image.open(FIXTURES / "rgba_q2_5.dcv") as im:
        assert im.info["quality"] == 2.5
