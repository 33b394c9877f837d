"""The model-free arithmetic on small synthetic score maps (hipt.attention.map_arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from hipt.attention.map_arithmetic import (
    ScoreCanvas,
    blend,
    check_shift,
    factorized_map,
    minmax,
    output_size,
    overlap_average,
    paste_shifted,
    percentile_rank,
    product_map,
    rank_per_map,
    shifted_view,
    tile_patch_maps,
    upsample_nearest,
)


def test_percentile_rank_matches_reference_formula():
    v = np.array([[3.0, 1.0], [2.0, 2.0]])
    # rankdata: 1 → 1, 2 → 2.5 (tie), 3 → 4; ×100/4
    np.testing.assert_allclose(percentile_rank(v), [[100.0, 25.0], [62.5, 62.5]])


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (1, 1)])
def test_constant_map_stays_constant(shape):
    c = np.full(shape, 0.37)
    r = percentile_rank(c)
    assert r.shape == shape and np.ptp(r) == 0
    per = rank_per_map(np.full((2, 3, *shape), 5.0))
    assert np.ptp(per) == 0
    # every constant view stays constant after overlap averaging where covered
    mean, count = overlap_average([np.full((2, 8, 6), 0.5)] * 3, [0, 1, 2])
    assert np.allclose(mean, 0.5) and count.min() == 1 and count.max() == 3
    assert np.allclose(factorized_map(np.full((8, 6), 0.3), count, np.full((8, 6), 0.3), count), 0.3)
    assert np.ptp(product_map(np.full((4, 4), 0.3), np.full((4, 4), 0.9))) == 0


def test_rank_per_map_ranks_each_block_separately():
    maps = np.zeros((2, 1, 2, 2))
    maps[0, 0] = [[1, 2], [3, 4]]
    maps[1, 0] = [[40, 30], [20, 10]]
    r = rank_per_map(maps)
    np.testing.assert_allclose(r[0, 0], [[0.25, 0.5], [0.75, 1.0]])
    np.testing.assert_allclose(r[1, 0], [[1.0, 0.75], [0.5, 0.25]])


@pytest.mark.parametrize("grid,out", [((2, 3), (8, 12)), ((4, 4), (4, 4)), ((3, 2), (9, 5)), ((16, 16), (4, 4))])
def test_upsample_nearest_shapes_and_blocks(grid, out):
    g = np.arange(np.prod(grid), dtype=np.float32).reshape(grid)
    u = upsample_nearest(g[None], out)
    assert u.shape == (1, *out)
    if out[0] % grid[0] == 0 and out[1] % grid[1] == 0:
        bh, bw = out[0] // grid[0], out[1] // grid[1]
        for i in range(grid[0]):
            for j in range(grid[1]):
                assert np.all(u[0, i * bh:(i + 1) * bh, j * bw:(j + 1) * bw] == g[i, j])


def test_shifted_view_pads_white_exactly():
    img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    v = shifted_view(img, 2)
    assert v.shape == img.shape
    assert np.array_equal(v[:4, :6], img[2:, 2:])
    assert np.all(v[4:] == 255) and np.all(v[:, 6:] == 255)
    assert np.array_equal(shifted_view(img, 0), img)
    with pytest.raises(ValueError):
        shifted_view(img, 6)


def test_shifted_views_align_with_the_unshifted_frame():
    """Views computed on shifted copies, pasted back, reproduce the true map: no off-by-offset."""
    rng = np.random.default_rng(0)
    truth = rng.random((12, 10)).astype(np.float32)  # any per-pixel score of the image
    shifts = [0, 2, 4, 6]
    # a "model" that reads the score of what it sees: view k shows truth[s:, s:] (then padding)
    views = [shifted_view(truth[..., None], s, fill=0)[..., 0] for s in shifts]
    mean, count = overlap_average(views, shifts)
    np.testing.assert_allclose(mean, truth, rtol=1e-6)
    # counts: 1 view in the first 2 rows/cols, then 2, 3, 4 (the reference's overlay / 100)
    assert count[0, 0] == 1 and count[2, 2] == 2 and count[4, 5] == 3 and count[11, 9] == 4
    assert count[1, 9] == 1 and count[9, 3] == 2


def test_paste_shifted_moves_content_by_the_shift():
    vm = np.zeros((1, 6, 6), np.float32)
    vm[0, 1, 2] = 1.0  # the view's pixel (1, 2) shows image pixel (1+s, 2+s)
    pasted, cover = paste_shifted(vm, 3)
    assert pasted[0, 4, 5] == 1.0 and pasted.sum() == 1.0
    assert cover[:3].sum() == 0 and cover[:, :3].sum() == 0 and cover[3:, 3:].all()


def test_single_hot_patch_lands_in_its_place_when_tiled():
    gh, gw, heads, ph, pw = 2, 3, 2, 4, 4  # non-square patch grid
    maps = np.zeros((gh * gw, heads, ph, pw), np.float32)
    r, c, i, j = 1, 2, 3, 1
    maps[r * gw + c, 1, i, j] = 1.0  # row-major patch index
    mosaic = tile_patch_maps(maps, (gh, gw))
    assert mosaic.shape == (heads, gh * ph, gw * pw)
    assert np.argwhere(mosaic[1]).tolist() == [[r * ph + i, c * pw + j]]
    assert mosaic[0].sum() == 0
    # and after upsampling by 2, a 2×2 block at the scaled position
    up = upsample_nearest(mosaic, (2 * gh * ph, 2 * gw * pw))
    ys, xs = np.nonzero(up[1])
    assert set(ys) == {2 * (r * ph + i), 2 * (r * ph + i) + 1} and set(xs) == {2 * (c * pw + j), 2 * (c * pw + j) + 1}
    with pytest.raises(ValueError):
        tile_patch_maps(maps, (3, 3))


def test_factorized_is_overlap_weighted_mean_and_product_is_minmax():
    region_map = np.array([[0.2, 0.8]], np.float32)
    patch_map = np.array([[0.6, 0.4]], np.float32)
    region_views = np.array([[1.0, 3.0]], np.float32)
    patch_views = np.array([[1.0, 1.0]], np.float32)
    factorized = factorized_map(region_map, region_views, patch_map, patch_views)
    np.testing.assert_allclose(factorized, [[0.4, (2.4 + 0.4) / 4]])
    np.testing.assert_allclose(product_map(region_map, patch_map), [[0.0, 1.0]])
    # broadcasting over heads
    assert factorized_map(np.ones((3, 1, 2)), region_views, np.ones((3, 1, 2)), patch_views).shape == (3, 1, 2)
    assert np.all(minmax(np.full((2, 2), 7.0)) == 0)


def test_blend_alpha_and_threshold():
    img = np.full((8, 6, 3), 100, np.uint8)
    score = np.zeros((8, 6), np.float32)
    score[2, 3] = 1.0
    assert np.array_equal(blend(img, score, alpha=0.0), img)
    full = blend(img, score, cmap="coolwarm", alpha=1.0)
    assert full.shape == img.shape and full.dtype == np.uint8 and not np.array_equal(full[2, 3], full[0, 0])
    th = blend(img, score, threshold=0.5, alpha=0.5)
    mask = np.ones((8, 6), bool)
    mask[2, 3] = False
    assert np.array_equal(th[mask], img[mask]) and not np.array_equal(th[2, 3], img[2, 3])
    # an image larger than the score map is downscaled to it
    assert blend(np.zeros((16, 12, 3), np.uint8), score).shape == (8, 6, 3)


def test_output_size_and_shift_checks():
    assert output_size(4096, 2048, 4) == (1024, 512)
    assert check_shift(128, 4) == 32 and check_shift(0, 3) == 0
    with pytest.raises(ValueError, match="whole number"):
        check_shift(128, 3)


@pytest.mark.parametrize("memmap", [False, True])
def test_score_canvas_is_bounded_clipped_and_averages(memmap, tmp_path):
    canvas = ScoreCanvas(10, 7, memmap_above=0 if memmap else 10**9, directory=tmp_path)
    assert isinstance(canvas.planes, np.memmap) == memmap
    assert canvas.nbytes == 2 * 4 * 10 * 7  # output resolution only
    canvas.add(-2, -2, np.ones((4, 4)))  # clipped at the top-left
    canvas.add(1, 1, np.full((2, 2), 3.0))  # overlaps: mean of 1 and 3
    canvas.add(8, 5, np.full((5, 5), 2.0))  # clipped at the bottom-right
    canvas.add(20, 20, np.ones((2, 2)))  # entirely outside: ignored
    res = canvas.result(fill=-1.0)
    assert res.shape == (10, 7)
    assert res[0, 0] == 1.0 and res[1, 1] == 2.0 and res[2, 2] == 3.0 and res[9, 6] == 2.0
    assert res[5, 3] == -1.0 and canvas.covered().sum() == 4 + 3 + 4
    canvas.close()
