"""Training data: every photo decoded once into one uint8 memmap, random crops drawn from memory.

Decoding JPEG/PNG per step would cost as much as a training step on 2 cores; the cache makes a
batch a handful of numpy slices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = {".png", ".jpg", ".jpeg"}
# Larger photos are also stored at half size: a cheap scale augmentation that shows the model
# more detail per crop (downscaling also washes out source JPEG artefacts).
HALF_SIZE_MIN_SIDE = 600


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)


def held_out(root: Path, count: int) -> list[Path]:
    """A fixed, spread-out subset of the training photos that training never samples: a validation
    set for A/B decisions that is not Kodak (the numbers we report) and not trained on."""
    paths = list_images(root)
    if count <= 0:
        return []
    step = len(paths) // count
    return paths[step // 2 :: step][:count]


def _cache_layout(root: Path) -> list[tuple[Path, int]]:
    """(photo, number of cache entries it makes) in cache order: one entry per photo, two for photos
    also stored at half size; found from the image sizes without decoding."""
    layout = []
    for path in list_images(root):
        with Image.open(path) as im:
            layout.append((path, 2 if min(im.size) >= HALF_SIZE_MIN_SIDE else 1))
    return layout


def cache_entries(root: Path, paths: list[Path]) -> set[int]:
    """Indices of the cache entries that ``build_cache`` made from ``paths``."""
    wanted, entries, n = set(paths), set(), 0
    for path, count in _cache_layout(root):
        if path in wanted:
            entries.update(range(n, n + count))
        n += count
    return entries


def cache_sources(root: Path) -> list[str]:
    """The source folder (first path part under ``root``) of every cache entry, in cache order."""
    return [path.relative_to(root).parts[0] for path, count in _cache_layout(root) for _ in range(count)]


def build_cache(root: Path, cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays: list[np.ndarray] = []
    for path in list_images(root):
        with Image.open(path) as im:
            im = im.convert("RGB")
            arrays.append(np.asarray(im))
            if min(im.size) >= HALF_SIZE_MIN_SIDE:
                half = im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)
                arrays.append(np.asarray(half))
    total = sum(a.size for a in arrays)
    flat = np.lib.format.open_memmap(cache_dir / "pixels.npy", mode="w+", dtype=np.uint8, shape=(total,))
    index = []
    offset = 0
    for a in arrays:
        flat[offset : offset + a.size] = a.reshape(-1)
        index.append([offset, a.shape[0], a.shape[1]])
        offset += a.size
    flat.flush()
    (cache_dir / "index.json").write_text(json.dumps({"source": str(root), "images": index}))


def random_crop(
    img: np.ndarray, crop: int, rng: np.random.Generator, scale: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """A random crop x crop window of img (h, w, 3), flipped horizontally half the time.

    With ``scale`` (lo, hi), hi <= 1, the window is first cut at crop / s for a log-uniform s in
    [lo, hi] (as far as the photo allows) and downscaled to crop x crop: a random zoom-out that
    shows the model more detail per crop and washes out the source's noise and JPEG blocking."""
    window = crop
    if scale[0] < 1.0:
        s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
        window = min(round(crop / s), img.shape[0], img.shape[1])
        if window < crop * 1.05:  # too small to zoom out: no resampling blur for a 1-2 % change
            window = crop
    top = rng.integers(0, img.shape[0] - window + 1)
    left = rng.integers(0, img.shape[1] - window + 1)
    tile = img[top : top + window, left : left + window]
    if window != crop:
        tile = np.asarray(Image.fromarray(np.ascontiguousarray(tile)).resize((crop, crop), Image.Resampling.BICUBIC))
    return tile[:, ::-1] if rng.random() < 0.5 else tile


class CropSampler:
    """Random crops of the cached photos, every pixel equally likely unless ``entry_weights`` (one
    per cache entry) scales some photos' pixels up or down; ``scale`` as in ``random_crop``."""

    def __init__(
        self,
        cache_dir: Path,
        crop: int,
        seed: int = 0,
        exclude: set[int] = frozenset(),
        entry_weights: list[float] | None = None,
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be 0 < lo <= hi <= 1, not {scale}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.pixels = np.load(cache_dir / "pixels.npy", mmap_mode="r")
        meta = json.loads((cache_dir / "index.json").read_text())
        keep = [n for n, e in enumerate(meta["images"]) if e[1] >= crop and e[2] >= crop and n not in exclude]
        self.images = [tuple(meta["images"][n]) for n in keep]
        area = np.array([h * w for _, h, w in self.images], dtype=np.float64)
        if entry_weights is not None:
            area *= np.array([entry_weights[n] for n in keep], dtype=np.float64)
        self.weights = area / area.sum()
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        """(size, crop, crop, 3) uint8, random crops with random horizontal flips."""
        out = np.empty((size, self.crop, self.crop, 3), dtype=np.uint8)
        picks = self.rng.choice(len(self.images), size=size, p=self.weights)
        for k, i in enumerate(picks):
            offset, h, w = self.images[i]
            photo = self.pixels[offset : offset + h * w * 3].reshape(h, w, 3)
            out[k] = random_crop(photo, self.crop, self.rng, self.scale)
        return out


class BucketSampler:
    """Crops of several sizes: every photo is cut at the largest crop it fits, so the small photos
    (481x321) stay in the mix while the large ones give crops with less border.

    ``buckets`` are (crop, batch) pairs; a step draws one bucket, with probabilities that keep every
    training pixel equally likely (a bucket's share of the pixels over its pixels per step). Each
    bucket is one tensor shape, so a compiled model specialises once per bucket.
    """

    def __init__(
        self, cache_dir: Path, buckets: list[tuple[int, int]], seed: int = 0, exclude: set[int] = frozenset()
    ) -> None:
        meta = json.loads((cache_dir / "index.json").read_text())["images"]
        self.buckets = sorted(((int(c), int(b)) for c, b in buckets), reverse=True)
        self.samplers: list[CropSampler] = []
        shares = []
        taken = set(exclude)
        for k, (crop, batch) in enumerate(self.buckets):
            sampler = CropSampler(cache_dir, crop, seed=seed + k, exclude=taken)
            taken |= {n for n, (_, h, w) in enumerate(meta) if h >= crop and w >= crop}
            self.samplers.append(sampler)
            shares.append(sum(h * w for _, h, w in sampler.images) / (crop * crop * batch))
        self.p = np.array(shares) / sum(shares)
        self.images = [im for s in self.samplers for im in s.images]  # len() for the log line
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int | None = None) -> np.ndarray:
        """One bucket's batch, (batch, crop, crop, 3) uint8; ``size`` is ignored (each bucket has its own)."""
        k = self.rng.choice(len(self.buckets), p=self.p)
        return self.samplers[k].batch(self.buckets[k][1])


# A compact copy of the training data for a lent GPU machine, which sees only the repository and up to
# 64 MiB of carried files (not ../shared): random crops of the cached photos (held-out photos
# excluded), stored as JPEG quality 95 with 4:4:4 chroma (~45 dB, far above what the model keeps) in
# one file, decoded into memory when training starts.
PACK_CROP = 288


def write_pack(cache_dir: Path, out: Path, budget_bytes: int, exclude: set[int], seed: int = 0) -> int:
    """Crops of PACK_CROP x PACK_CROP drawn like CropSampler's until the JPEG bytes reach the budget."""
    import io

    sampler = CropSampler(cache_dir, PACK_CROP, seed=seed, exclude=exclude)
    blobs: list[bytes] = []
    size = 0
    while True:
        crop = sampler.batch(1)[0]
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "JPEG", quality=95, subsampling=0)
        if size + buf.tell() > budget_bytes:
            break
        blobs.append(buf.getvalue())
        size += buf.tell()
    out.mkdir(parents=True, exist_ok=True)
    (out / "crops.bin").write_bytes(b"".join(blobs))
    (out / "crops.json").write_text(json.dumps({"crop": PACK_CROP, "sizes": [len(b) for b in blobs]}))
    return len(blobs)


class PackSampler:
    """CropSampler's interface over a pack written by write_pack: random sub-crops, random flips."""

    def __init__(self, pack: Path, crop: int, seed: int = 0) -> None:
        import io

        meta = json.loads((pack / "crops.json").read_text())
        if crop > meta["crop"]:
            raise ValueError(f"crop {crop} is larger than the pack's {meta['crop']}")
        data = (pack / "crops.bin").read_bytes()
        ends = np.cumsum(meta["sizes"])
        self.crops = np.stack(
            [np.asarray(Image.open(io.BytesIO(data[e - s : e])).convert("RGB")) for s, e in zip(meta["sizes"], ends)]
        )
        self.images = self.crops  # len() for the log line
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> np.ndarray:
        picks = self.rng.integers(0, len(self.crops), size=size)
        return np.stack([random_crop(self.crops[i], self.crop, self.rng) for i in picks])
