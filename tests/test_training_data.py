"""The training crop samplers over a small synthetic photo cache (numpy and Pillow only)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from data import BucketSampler, build_cache  # noqa: E402

# (height, width, grey level): the level tells which photo a crop came from
PHOTOS = [(70, 90, 10), (64, 64, 60), (40, 50, 110), (33, 80, 160), (20, 20, 210)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for k, (h, w, level) in enumerate(PHOTOS):
        Image.new("RGB", (w, h), (level,) * 3).save(root / f"{k}.png")
    out = root / "cache"
    build_cache(root, out)
    return out


def levels(batch: np.ndarray) -> set[int]:
    return {int(crop[0, 0, 0]) for crop in batch}


def test_every_photo_is_cut_at_the_largest_crop_it_fits(cache: Path) -> None:
    sampler = BucketSampler(cache, [[32, 3], [64, 1]], seed=0)
    seen: dict[tuple[int, ...], set[int]] = {}
    for _ in range(300):
        batch = sampler.batch()
        seen.setdefault(batch.shape, set()).update(levels(batch))
    assert seen == {(1, 64, 64, 3): {10, 60}, (3, 32, 32, 3): {110, 160}}  # 20x20 fits neither


def test_buckets_are_drawn_so_that_every_pixel_is_equally_likely(cache: Path) -> None:
    sampler = BucketSampler(cache, [[64, 1], [32, 3]], seed=1)
    large, small = 70 * 90 + 64 * 64, 40 * 50 + 33 * 80
    per_step = np.array([large / (64 * 64 * 1), small / (32 * 32 * 3)])
    np.testing.assert_allclose(sampler.p, per_step / per_step.sum())
    draws = [sampler.batch().shape[1] for _ in range(2000)]
    assert abs(np.mean(np.array(draws) == 64) - sampler.p[0]) < 0.04


def test_excluded_photos_are_never_sampled(cache: Path) -> None:
    sampler = BucketSampler(cache, [[64, 1], [32, 3]], seed=2, exclude={0, 3})
    seen = set().union(*(levels(sampler.batch()) for _ in range(200)))
    assert seen == {60, 110}


def test_source_weights_scale_a_folders_share_of_the_crops(tmp_path: Path) -> None:
    from data import CropSampler, cache_sources

    for folder, level in (("clean", 30), ("jpeg", 200)):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (40, 40), (level,) * 3).save(tmp_path / folder / "a.png")
    build_cache(tmp_path, tmp_path / "cache")
    assert cache_sources(tmp_path) == ["clean", "jpeg"]
    plain = CropSampler(tmp_path / "cache", 32, seed=0)
    weighted = CropSampler(tmp_path / "cache", 32, seed=0, entry_weights=[1.0, 0.25])
    np.testing.assert_allclose(plain.weights, [0.5, 0.5])
    np.testing.assert_allclose(weighted.weights, [0.8, 0.2])
    draws = np.concatenate([weighted.batch(50)[:, 0, 0, 0] for _ in range(20)])
    assert abs(np.mean(draws == 200) - 0.2) < 0.05


def test_rescaled_crops_are_downscaled_windows_of_the_photo(tmp_path: Path) -> None:
    from data import CropSampler, random_crop

    ramp = np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 128, axis=0), 3, axis=2)
    rng = np.random.default_rng(0)
    plain = random_crop(ramp, 32, rng)
    assert np.ptp(plain[0, :, 0].astype(int)) == 31  # 32 neighbouring columns
    zoomed = random_crop(ramp, 32, rng, scale=(0.25, 0.25))
    assert zoomed.shape == (32, 32, 3)
    assert np.ptp(zoomed[0, :, 0].astype(int)) > 100  # a 128-pixel window brought down to 32
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    build_cache(tmp_path, tmp_path / "cache")
    with pytest.raises(ValueError, match="scale"):
        CropSampler(tmp_path / "cache", 32, scale=(0.5, 1.5))
    batch = CropSampler(tmp_path / "cache", 32, scale=(0.3, 0.6)).batch(4)
    assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8
