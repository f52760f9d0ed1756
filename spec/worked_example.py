"""Regenerate section 12 of format.md (the worked example) for the shipped model.

    python spec/worked_example.py          # rewrites section 12 in spec/format.md

It decodes the example's streams with `ReferenceDecoder`, a plain-Python reading of section 7 that
does not use constriction, and checks that it gives the same symbols as the reference codec. So
the example's numbers come from the spec's own algorithm.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import pillow_dcv  # noqa: F401
from pillow_dcv import codec, container
from pillow_dcv.models import get_model

SPEC = Path(__file__).resolve().parent / "format.md"
COMMAND = """python3 -c "import pillow_dcv; from PIL import Image; \\
  Image.new('RGB',(16,16),(200,120,40)).save('/tmp/spec_example.dcv', quality=1, effort=1)\""""


def quantised_table(counts: np.ndarray) -> list[int]:
    """Section 7.1: cumulative frequencies L_0 .. L_n."""
    n = len(counts)
    scale = (2**24 - n) / float(sum(int(c) for c in counts))
    cumulative = np.concatenate(([0], np.cumsum(counts.astype(np.int64))[:-1]))
    return [math.trunc(float(c) * scale) + i for i, c in enumerate(cumulative)] + [2**24]


class ReferenceDecoder:
    """Section 7.2, with a log of the word pops for the narrative."""

    def __init__(self, data: bytes) -> None:
        self.words = list(struct.unpack(f"<{len(data) // 4}I", data))
        self.pops: list[tuple[int, int]] = []  # (symbols decoded before the pop, word)
        self.count = 0
        self.state = 0
        if self.words:
            assert self.words[-1] != 0
            self.state = self._pop()
            while self.state < 2**32 and self.words:
                self.state = (self.state << 32) | self._pop()
        self.initial_state = self.state

    def _pop(self) -> int:
        word = self.words.pop()
        self.pops.append((self.count, word))
        return word

    def decode(self, cumulative: list[int]) -> tuple[int, dict]:
        q = self.state % 2**24
        s = int(np.searchsorted(cumulative, q, side="right")) - 1
        f = cumulative[s + 1] - cumulative[s]
        before = self.state
        self.state = (self.state >> 24) * f + (q - cumulative[s])
        step = {"state": before, "q": q, "s": s, "L": cumulative[s], "f": f, "new_state": self.state}
        self.count += 1
        if self.state < 2**32 and self.words:
            self.state = (self.state << 32) | self._pop()
        return s, step


def decode_part(dec: ReferenceDecoder, tables, table_of: np.ndarray, steps: list) -> np.ndarray:
    """Section 7.3 order: groups by table index ascending, stable within a group."""
    out = np.empty(table_of.shape, dtype=np.int64)
    for k in np.unique(table_of):
        cumulative = quantised_table(tables.counts[k])
        for i in np.flatnonzero(table_of == k):
            s, step = dec.decode(cumulative)
            out[i] = s + tables.offsets[k]
            steps.append((int(k), int(i), step))
    return out


def decode_tile_stream(data: bytes, model, cz: int, row: int):
    """Sections 7.3 and 6: z (with row `row` of the z tables), then the parts of y in order (6.1,
    6.2), each with the tables that the symbols before it give; one stream, which must end cleanly
    after the last part."""
    dec, zsteps, ysteps = ReferenceDecoder(data), [], []
    z = decode_part(dec, model.z_tables, row * cz + np.arange(cz), zsteps).reshape(cz, 1, 1)
    z_pops = len(dec.pops)
    acc = model.prior.hyper(z)
    _, hyper_index = model.prior.tables(acc)
    y = np.zeros(hyper_index.shape, dtype=np.int64)
    part_sizes = []
    for part, update in model.prior.stages(y.shape):
        if update is not None:
            acc = update(acc, y)
        mu, scale_index = model.prior.tables(acc)
        mask = part.mask(y.shape)
        y[mask] = decode_part(dec, model.y_tables, scale_index[mask], ysteps)
        part_sizes.append(int(mask.sum()))
    assert dec.state == 0 and not dec.words, "stream did not end cleanly"
    return z, y, mu, hyper_index, scale_index, dec, z_pops, zsteps, ysteps, part_sizes


def hexdump(data: bytes) -> str:
    lines = []
    for o in range(0, len(data), 16):
        row = data[o : o + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{o:08x}: {hexes:<47}  {text}")
    return "\n".join(lines)


def h(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def section() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 40)).save(buf, "DCV", quality=1, effort=1)
    data = buf.getvalue()
    info = codec.read_info(io.BytesIO(data))
    header = info.index.container.header
    model = get_model(header["model_id"])
    (_, tile_offset, tile_size), = [c for c in info.index.chunk_table if c[0] == container.TILE]
    _, tile = container.read_chunk(io.BytesIO(data), tile_offset, tile_size)

    rows = model.z_rows  # section 7.3: the z tables' row of the header's quality
    cz = len(model.z_tables.offsets) // rows
    row = min(rows, max(1, math.floor(header["quality"] / 256 + 0.5))) - 1
    stream = tile["stream"]
    z, y, mu, hyper_index, scale_index, dec, z_pops, zsteps, ysteps, part_sizes = decode_tile_stream(
        stream, model, cz, row
    )
    changed = int((hyper_index != scale_index).sum())
    crc = zlib.crc32(struct.pack("<I", 0))
    crc = zlib.crc32(y.astype("<i4").tobytes(), zlib.crc32(z.astype("<i4").tobytes(), crc))
    assert crc == tile["symbols_crc"]
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3).mean(axis=0)

    mid = header["model_id"].encode()
    n = len(stream)
    hash_size = container.MODEL_HASH_SIZE
    t0 = tile_offset  # chunk start: type at t0, length at t0 + 4, payload at t0 + 8
    rows = [
        ("0x00", h(data[0:8]), "signature", ""),
        ("0x08", h(data[8:12]), "chunk type", "`DHDR` (critical)"),
        ("0x0C", h(data[12:16]), "length", str(int.from_bytes(data[12:16], "big"))),
        ("0x10", h(data[16:17]), "version_major", str(header["version_major"])),
        ("0x11", h(data[17:18]), "version_minor", str(header["version_minor"])),
        ("0x12", h(data[18:20]), "width", "16"),
        ("0x14", h(data[20:22]), "height", "16"),
        ("0x16", h(data[22:23]), "colour", "rgb"),
        ("0x17", h(data[23:24]), "alpha", "none → mode `RGB`"),
        ("0x18", h(data[24:26]), "quality", f"{header['quality']} → {header['quality'] / 256}"),
        ("0x1A", h(data[26:28]), "tile_size", str(header["tile_size"])),
        ("0x1C", h(data[28 : 28 + len(mid)]) + f" + {16 - len(mid)} × `00`", "model_id", f"`{header['model_id']}`"),
        ("0x2C", h(data[44 : 44 + hash_size]), "model_hash",
         f"the first {hash_size} bytes of the SHA-256 of the model files, `{model.hash.hex()}`"),
        ("0x34", h(data[52:53]), "coder", "ans32"),
        ("0x35", h(data[53:54]), "orientation", f"{header['orientation']} → coded as it is (effort 1: no search)"),
        ("0x36", h(data[54:58]), "CRC-32 of bytes 0x08–0x35", ""),
        (f"0x{t0:02X}", h(data[t0 : t0 + 4]), "chunk type", "`TILE`"),
        (f"0x{t0 + 4:02X}", h(data[t0 + 4 : t0 + 8]), "length", f"{tile_size - 12} = 4 + {n}"),
        (f"0x{t0 + 8:02X}", h(data[t0 + 8 : t0 + 12]), "symbols_crc", f"0x{tile['symbols_crc']:08X}"),
        (f"0x{t0 + 12:02X}", h(stream), "stream",
         f"{n} bytes = {n // 4} words; {z.size} + {y.size} symbols (Cz × 1 × 1, then {y.shape[0]} × 4 × 4)"),
        (f"0x{t0 + tile_size - 4:02X}", h(data[t0 + tile_size - 4 : t0 + tile_size]),
         f"CRC-32 of bytes 0x{t0:02X}–0x{t0 + tile_size - 5:02X}", ""),
    ]
    table = "| Offset | Bytes | Field | Value |\n|---|---|---|---|\n" + "\n".join(
        f"| {o} | `{b}` | {f} | {v} |" if "…" not in b and "×" not in b else f"| {o} | {b} | {f} | {v} |"
        for o, b, f, v in rows
    )

    k0, _, first = zsteps[0]
    zt = model.z_tables
    n0, total0 = len(zt.counts[k0]), int(zt.counts[k0].sum())
    zero = int((z == 0).sum())
    nonzero = ", ".join(f"{c}: {int(z[c, 0, 0]):+d}" for c in np.flatnonzero(z[:, 0, 0] != 0))
    initial_pops = next((i for i, (count, _) in enumerate(dec.pops) if count > 0), len(dec.pops))
    zpops = ", ".join(f"0x{w:08X} after {c} symbols" for c, w in dec.pops[initial_pops:z_pops]) or "none"
    ypops = ", ".join(f"0x{w:08X} after {c} symbols" for c, w in dec.pops[max(z_pops, initial_pops):]) or "none"
    ky, iy, yfirst = ysteps[0]
    yt0 = model.y_tables
    ynz = [(tuple(int(v) for v in np.unravel_index(i, y.shape)), int(y.ravel()[i]), int(scale_index.ravel()[i]))
           for i in np.flatnonzero(y.ravel() != 0)]
    ynz_text = "; ".join(f"{pos} = {v:+d} (table {t})" for pos, v, t in ynz[:12])
    if len(ynz) > 12:
        ynz_text += f"; and {len(ynz) - 12} more"
    used = np.unique(scale_index)
    s0, lo0, hi0 = first["s"], first["L"], first["L"] + first["f"]
    counts_y = [int(c) for c in yt0.counts[ky][:7]]
    more_y = " …" if len(yt0.counts[ky]) > 7 else ""
    value_y = yfirst["s"] + int(yt0.offsets[ky])
    narrative = f"""Decoding the tile. The image is padded to 64 × 64, one cell, so z has shape ({cz}, 1, 1) and y
has shape ({y.shape[0]}, 4, 4). The numbers below come from `spec/worked_example.py`, which decodes
the stream with a plain reading of section 7 (no constriction) and checks the result against the
reference codec.

- The stream's initial state is 0x{dec.initial_state:X} (the last word is popped first, then
  words while the state is below 2^32).
- z: symbol (0, 0, 0) uses `z` table {k0}: n = {n0},
  N = {total0:,}, offset {int(zt.offsets[k0])}. q = 0x{first['q']:X} lies in
  [L_{s0}, L_{s0 + 1}) = [{lo0:,}, {hi0:,}), so the index is {s0} and the value
  is {s0 + int(zt.offsets[k0]):+d}. The new state is 0x{first['new_state']:X}. Words popped while
  decoding z: {zpops}. {zero} of the {z.size} `z` symbols are 0;
  the others are (channel: value) {nonzero}.
- The prior of this z (section 6) gives the first part of y its tables. y comes in
  {len(part_sizes)} parts of {", ".join(map(str, part_sizes))} symbols (section 7.3): the anchors (row + column
  even) of channels 0..{y.shape[0] // 2 - 1}, the anchors of the other half (6.2), the non-anchors of the first half
  (6.1), and those of the second half (6.1 and 6.2). The contexts change the table of {changed} of the
  {y.size - part_sizes[0]} latents after the first part. In all,
  `scale_index` runs from {int(used.min())} to {int(used.max())}
  ({int((scale_index == used.min()).sum())} of the {y.size} latents use table {int(used.min())}) and mu
  from {float(mu.min()):.2f} to {float(mu.max()):.2f}.
- y: the first symbol (table {ky}, counts
  `{counts_y}{more_y}`, offset {int(yt0.offsets[ky])}) has
  q = 0x{yfirst['q']:X}, index {yfirst['s']}, value {value_y:+d}. In each part, the tables that
  occur are decoded in ascending table order; words popped while decoding y (counting symbols from
  the start of the stream): {ypops}. The non-zero `y` symbols (position (channel, row, column) =
  value): {ynz_text or 'none'}. After the last symbol the state is 0 with no words left.
- CRC-32 of the tile index 0 (4 bytes, little-endian) and the {z.size} + {y.size} symbols as
  little-endian int32 = 0x{crc:08X} = `symbols_crc`.
- Synthesis of `y_hat = y + mu` (plus the reconstruction offsets of the non-zero symbols, section 5.6)
  gives the 16 × 16 image. At quality 1 it is not uniform: with the
  reference runtime the mean pixel is about ({pixels[0]:.0f}, {pixels[1]:.0f}, {pixels[2]:.0f}), against
  (200, 120, 40) in the source (pixels need not be bit-exact, section 1).
"""
    return f"""## 12. Worked example

Made with (regenerate this section with `python spec/worked_example.py`):

```
{COMMAND}
```

The model was `{header['model_id']}`, the trained model shipped in `pillow_dcv/models/`. **The payload
bytes (`model_hash`, `symbols_crc`, the stream, and the CRCs that cover them) depend on the
model weights.** Another model, or retrained weights, gives other bytes with the same structure.
The file is {len(data)} bytes:

```
{hexdump(data)}
```

{table}

{narrative}
"""


def main() -> None:
    text = SPEC.read_text()
    start = text.index("## 12. Worked example")
    end = text.index("## Appendix A.")
    SPEC.write_text(text[:start] + section() + "\n" + text[end:])
    print(f"rewrote section 12 of {SPEC}")


if __name__ == "__main__":
    main()
