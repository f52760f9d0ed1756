"""The dcv command: encode, decode, info and their exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from pillow_dcv.cli import main


def test_encode_decode_info(photo: Image.Image, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sources = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.png"
        photo.save(path)
        sources.append(path)
    out = tmp_path / "out"
    assert main(["encode", *map(str, sources), "-q", "3", "-e", "2", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.dcv", "b.dcv"]
    assert main(["decode", str(out / "a.dcv"), str(tmp_path / "a_decoded.png")]) == 0
    assert Image.open(tmp_path / "a_decoded.png").size == photo.size
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a_decoded.png")), np.asarray(Image.open(out / "a.dcv")))
    capsys.readouterr()
    assert main(["info", str(ROOT / "fixtures" / "rgb_q4.dcv")]) == 0
    text = capsys.readouterr().out
    assert "64x48 RGB" in text and "bpp" in text and "DHDR" in text and "TILE" in text


def test_failures_give_exit_status_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcv"
    bad.write_bytes(b"\x89DCV\r\n\x1a\n" + bytes(20))
    assert main(["info", str(bad)]) == 1
    assert main(["decode", str(bad), str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()
    assert main(["encode", str(tmp_path / "missing.png")]) == 1
    with pytest.raises(SystemExit) as e:
        main(["encode", str(bad), "-q", "9"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["encode", str(bad), "-e", "0"])
    assert e.value.code == 2
