"""Entropy coding of integer symbols with constriction's ANS coder and fixed integer tables.

Every table is a vector of integer counts (>= 1) stored in the model file, so the coded stream
depends only on integers: the same bytes on every machine. Symbols that share a table are coded
in one call; the decoder knows each symbol's table from the (integer-exact) prior and groups the
same way. A stream holds several parts (a tile's hyper-latent, then the checkerboard's anchors,
then the rest), decoded in order because the tables of a part depend on the symbols before it.
"""

from __future__ import annotations

import numpy as np

CODER_NAME = "ans32"


def _constriction():  # imported lazily: Image.open must stay fast
    import constriction

    return constriction


class Tables:
    """A family of categorical tables. Table k covers symbols offset[k] .. offset[k] + len - 1."""

    def __init__(self, counts: list[np.ndarray], offsets: np.ndarray) -> None:
        self.counts = counts
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lows = self.offsets
        self.highs = self.offsets + np.array([len(c) for c in counts]) - 1
        self._models: dict[int, object] = {}

    def model(self, k: int):
        m = self._models.get(k)
        if m is None:
            c = _constriction()
            m = c.stream.model.Categorical(self.counts[k].astype(np.float64), perfect=False)
            self._models[k] = m
        return m

    def clamp(self, symbols: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Clamp each symbol into its table's support (values outside are vanishingly rare)."""
        return np.clip(symbols, self.lows[table], self.highs[table])


def _groups(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable order of the symbols by table, the tables that occur (ascending) and their counts."""
    if table.size and not 0 <= table.min() <= table.max() < 2**16:
        raise ValueError("table index out of range")
    # numpy's stable sort is a radix sort for 8- and 16-bit keys (one pass for 8 bits: the y tables)
    small = table.astype(np.uint8 if table.size == 0 or table.max() < 2**8 else np.uint16)
    order = np.argsort(small, kind="stable")
    counts = np.bincount(small)
    groups = np.flatnonzero(counts)
    return order, groups, counts[groups]


def encode(parts: list[tuple[np.ndarray, np.ndarray, Tables]]) -> bytes:
    """Code parts ``(symbols, table, tables)`` (symbols already inside their supports, symbol i of a
    part uses ``tables`` number ``table[i]``) into one stream, from which :class:`Decoder` reads
    them in order."""
    c = _constriction()
    coder = c.stream.stack.AnsCoder()
    # ANS is a stack: push everything in reverse so the decoder pops parts and groups in order.
    for symbols, table, tables in reversed(parts):
        symbols = symbols.ravel()
        order, groups, counts = _groups(table.ravel())
        bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
        for g in range(len(groups) - 1, -1, -1):
            k = int(groups[g])
            chosen = symbols[order[bounds[g] : bounds[g + 1]]] - tables.offsets[k]
            coder.encode_reverse(chosen.astype(np.int32), tables.model(k))
    return coder.get_compressed().astype("<u4").tobytes()


class Decoder:
    """Reads the parts of one stream in order: a part's tables may depend on the parts before it.
    Raises ``ValueError`` on a stream that is not well formed."""

    def __init__(self, data: bytes) -> None:
        if len(data) % 4:
            raise ValueError("entropy-coded stream is not a whole number of 32-bit words")
        words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = _constriction().stream.stack.AnsCoder(words)

    def decode(self, table: np.ndarray, tables: Tables) -> np.ndarray:
        table = table.ravel()
        order, groups, counts = _groups(table)
        values = np.empty(table.size, dtype=np.int64)  # group after group, then put in place at once
        start = 0
        for k, n in zip(groups.tolist(), counts.tolist()):
            values[start : start + n] = self._coder.decode(tables.model(k), n)
            start += n
        values += np.repeat(tables.offsets[groups], counts)
        out = np.empty(table.size, dtype=np.int64)
        out[order] = values
        return out

    def finish(self) -> None:
        if not self._coder.is_empty():
            raise ValueError("entropy-coded stream has data left over")


def decode(data: bytes, table: np.ndarray, tables: Tables) -> np.ndarray:
    """A stream of one part."""
    decoder = Decoder(data)
    out = decoder.decode(table, tables)
    decoder.finish()
    return out
