"""BraTS 2023 lesion-wise scores: hand-built volumes with answers worked out by hand, a brute-force
reference (tests/lesionwise_reference.py) on random multi-lesion volumes, and the reporting helpers."""

import dataclasses

import lesionwise_reference as ref
import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice
from scipy import ndimage

from cggm_seg.metrics import lesionwise as lw
from cggm_seg.metrics.lesionwise import (
    CHALLENGE_SETTINGS,
    GLI,
    LesionwiseSettings,
    lesionwise_case_scores,
    lesionwise_region_scores,
)
from cggm_seg.plots import box_plots

N = 40  # side of the hand-built volumes


def volume(*boxes: tuple[int, int, int, int, int, int]) -> np.ndarray:
    """Boolean N^3 volume with the boxes (x0, x1, y0, y1, z0, z1) set."""
    mask = np.zeros((N, N, N), dtype=bool)
    for x0, x1, y0, y1, z0, z1 in boxes:
        mask[x0:x1, y0:y1, z0:z1] = True
    return mask


def cube(corner: int | tuple[int, int, int], side: int) -> tuple[int, int, int, int, int, int]:
    x, y, z = (corner,) * 3 if isinstance(corner, int) else corner
    return (x, x + side, y, y + side, z, z + side)


A = cube(5, 5)  # 125 voxels
B = cube(25, 4)  # 64 voxels, far from A


def test_missed_lesion_scores_zero_and_penalty():
    scores = lesionwise_region_scores(volume(A), volume(A, B))
    assert (scores["tp"], scores["fn"], scores["fp"]) == (1, 1, 0)
    assert scores["lesion_dice"] == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)
    assert scores["lesion_hd95"] == pytest.approx((0.0 + 374.0) / 2, abs=1e-3)
    assert scores["dice"] == pytest.approx(2 * 125 / (125 + 189), abs=1e-6)


def test_false_positive_islands_of_any_size_count():
    scores = lesionwise_region_scores(volume(A, B), volume(A))
    assert (scores["tp"], scores["fn"], scores["fp"]) == (1, 0, 1)
    assert scores["lesion_dice"] == pytest.approx(0.5, abs=1e-6)
    assert scores["lesion_hd95"] == pytest.approx(187.0, abs=1e-3)
    # a one-voxel false positive is not dropped by the volume threshold (that applies to truth only)
    scores = lesionwise_region_scores(volume(A, cube(30, 1)), volume(A))
    assert (scores["tp"], scores["fp"]) == (1, 1)
    assert scores["lesion_dice"] == pytest.approx(0.5, abs=1e-6)
    assert scores["dice"] == pytest.approx(250 / 251, abs=1e-6)


@pytest.mark.parametrize("gap, lesions", [(6, 1), (7, 2)])
def test_islands_merge_within_the_dilation_distance(gap, lesions):
    # two 4^3 (64-voxel) islands `gap` empty voxels apart along axis 0; 3 dilations grow each by 3
    # voxels, so up to 6 empty voxels the dilated islands touch and form one lesion
    first, second = (5, 9, 10, 14, 10, 14), (9 + gap, 13 + gap, 10, 14, 10, 14)
    scores = lesionwise_region_scores(volume(first), volume(first, second))
    if lesions == 1:  # one 128-voxel lesion, hit by the first island
        assert (scores["tp"], scores["fn"]) == (1, 0)
        assert scores["lesion_dice"] == pytest.approx(2 * 64 / (64 + 128), abs=1e-6)
    else:  # the second island is its own lesion, missed
        assert (scores["tp"], scores["fn"]) == (1, 1)
        assert scores["lesion_dice"] == pytest.approx(0.5, abs=1e-6)
        assert scores["lesion_hd95"] == pytest.approx(187.0, abs=1e-3)
    both = lesionwise_region_scores(volume(first, second), volume(first, second))
    assert (both["tp"], both["lesion_dice"], both["lesion_hd95"]) == (lesions, 1.0, 0.0)


@pytest.mark.parametrize("gap, lesions", [(4, 1), (5, 2)])
def test_dilation_uses_the_18_neighbourhood(gap, lesions):
    # islands offset diagonally by `gap` voxels along every axis: the official structure
    # generate_binary_structure(3, 2) reaches (2, 2, 2) in 3 steps, the full 3x3x3 cube would reach
    # (3, 3, 3) and merge them at gap 5 too
    first, second = cube(5, 4), cube(9 + gap, 4)
    scores = lesionwise_region_scores(volume(first), volume(first, second))
    assert scores["tp"] + scores["fn"] == lesions


def test_lesions_at_or_below_the_volume_threshold_are_dropped():
    small = cube(30, 3)  # 27 voxels
    scores = lesionwise_region_scores(volume(A), volume(A, small))
    assert (scores["tp"], scores["fn"], scores["fp"]) == (1, 0, 0)
    assert (scores["lesion_dice"], scores["lesion_hd95"]) == (1.0, 0.0)
    # a prediction hitting only the dropped lesion is not a false positive either
    scores = lesionwise_region_scores(volume(A, small), volume(A, small))
    assert (scores["tp"], scores["fn"], scores["fp"]) == (1, 0, 0)
    # exactly 50 voxels is dropped (<=), 51 is kept
    fifty = (25, 30, 25, 30, 25, 27)
    assert lesionwise_region_scores(volume(A), volume(A, fifty))["lesion_dice"] == 1.0
    fifty_one = lesionwise_region_scores(volume(A), volume(A, fifty, cube((25, 25, 27), 1)))
    assert (fifty_one["fn"], fifty_one["lesion_dice"]) == (1, 0.5)
    # the threshold is a volume in mm^3: 27 voxels of 2 mm^3 are kept
    scores = lesionwise_region_scores(volume(A), volume(A, small), spacing=(2.0, 1.0, 1.0))
    assert (scores["tp"], scores["fn"]) == (1, 1)
    # only sub-threshold truth and no false positive: nothing to average -> Dice 1, HD95 0
    scores = lesionwise_region_scores(volume(), volume(small))
    assert (scores["lesion_dice"], scores["lesion_hd95"], scores["fn"]) == (1.0, 0.0, 0)
    assert (scores["dice"], scores["hd95"]) == (0.0, 374.0)


@pytest.mark.parametrize(
    "spacing, axis, expected_mm",
    [
        ((2.0, 1.0, 1.0), 0, 4.0),  # 2 voxels of 2 mm
        ((2.0, 1.0, 1.0), 2, 2.0),  # 2 voxels of 1 mm
        ((1.0, 1.0, 2.0), 2, 4.0),
        ((1.0, 1.0, 2.0), 0, 2.0),
    ],
)
def test_hd95_is_in_mm_along_the_right_axes(spacing, axis, expected_mm):
    # an 8^3 cube shifted by 2 voxels: every surfel lies within the shift distance of the other
    # surface, and the faces at exactly that distance hold more than 5 % of the area
    corner = [10, 10, 10]
    corner[axis] += 2
    scores = lesionwise_region_scores(volume(cube(tuple(corner), 8)), volume(cube(10, 8)), spacing=spacing)
    assert scores["lesion_hd95"] == pytest.approx(expected_mm, abs=1e-3)
    assert scores["hd95"] == pytest.approx(expected_mm, abs=1e-3)
    assert scores["lesion_dice"] == pytest.approx(2 * 6 * 64 / (2 * 512), abs=1e-6)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 0, 0)


def test_lesion_is_scored_against_all_components_that_hit_it():
    # a prediction split in two by a missing plane: both components hit the lesion, scored as one
    split = volume((10, 14, 10, 18, 10, 18), (15, 18, 10, 18, 10, 18))
    scores = lesionwise_region_scores(split, volume(cube(10, 8)))
    assert (scores["tp"], scores["fp"]) == (1, 0)
    assert scores["lesion_dice"] == pytest.approx(2 * 448 / (448 + 512), abs=1e-6)
    # one bar hitting two lesions is scored, whole, with each of them
    bar = volume((5, 23, 5, 9, 5, 9))  # 18 * 16 = 288 voxels
    scores = lesionwise_region_scores(bar, volume(cube(5, 4), cube((19, 5, 5), 4)))
    assert (scores["tp"], scores["fn"], scores["fp"]) == (2, 0, 0)
    assert scores["lesion_dice"] == pytest.approx(2 * 64 / (64 + 288), abs=1e-6)


def test_empty_masks():
    empty, lesion = volume(), volume(A)
    both = lesionwise_region_scores(empty, empty)
    assert both == {
        "lesion_dice": 1.0,
        "lesion_hd95": 0.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "dice": 1.0,
        "hd95": 0.0,
        "nsd": 1.0,
    }
    only_pred = lesionwise_region_scores(lesion, empty)
    assert only_pred == {
        "lesion_dice": 0.0,
        "lesion_hd95": 374.0,
        "tp": 0,
        "fp": 1,
        "fn": 0,
        "dice": 0.0,
        "hd95": 374.0,
        "nsd": 0.0,
    }
    only_truth = lesionwise_region_scores(empty, lesion)
    assert only_truth == {
        "lesion_dice": 0.0,
        "lesion_hd95": 374.0,
        "tp": 0,
        "fp": 0,
        "fn": 1,
        "dice": 0.0,
        "hd95": 374.0,
        "nsd": 0.0,
    }


def test_neighbour_codes_match_the_official_correlation():
    # the official code pads the box by one voxel at the high end and correlates with this kernel
    mask = np.random.default_rng(0).random((7, 8, 9)) > 0.5
    padded = np.zeros(np.array(mask.shape) + 1, dtype=np.int64)
    padded[:-1, :-1, :-1] = mask
    kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
    official = ndimage.correlate(padded, kernel, mode="constant", cval=0)
    np.testing.assert_array_equal(lw._neighbour_codes(mask), official)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.0, 0.7)])
def test_nsd_matches_brute_force_and_monai(spacing):
    rng = np.random.default_rng(3)
    gt = ndimage.binary_opening(rng.random((12, 12, 12)) > 0.5)
    pred = ndimage.binary_opening(rng.random((12, 12, 12)) > 0.5)
    settings = dataclasses.replace(GLI, nsd_tolerance_mm=1.0)
    nsd = lesionwise_region_scores(pred, gt, spacing, settings)["nsd"]
    brute = ref.surface_dice(ref.surface_distances(gt, pred, spacing), 1.0)
    assert 0.0 < nsd < 1.0
    assert nsd == pytest.approx(brute, abs=1e-6)
    as_tensor = lambda mask: torch.as_tensor(mask)[None, None]  # noqa: E731
    monai_nsd = compute_surface_dice(
        as_tensor(pred), as_tensor(gt), [1.0], include_background=True, spacing=spacing, use_subvoxels=True
    ).item()
    assert nsd == pytest.approx(monai_nsd, abs=1e-5)  # MONAI's surfel areas are float32


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth: balls in 4-6 of the 8 octants (some below 50 voxels, some with a satellite island close
    enough to merge); prediction: moved/resized balls, misses and small false positives."""
    rng = np.random.default_rng(seed)
    side = 36
    grid = np.indices((side, side, side))

    def ball(center, radius):
        return ((grid - np.asarray(center)[:, None, None, None]) ** 2).sum(0) <= radius**2

    gt, pred = np.zeros((side,) * 3, bool), np.zeros((side,) * 3, bool)
    octants = np.array([(x, y, z) for x in (9, 27) for y in (9, 27) for z in (9, 27)])
    for center in rng.permutation(octants)[: rng.integers(4, 7)]:
        center = center + rng.integers(-2, 3, size=3)
        radius = rng.uniform(1.5, 4.5)
        gt |= ball(center, radius)
        if rng.random() < 0.4:  # satellite island 2-3 voxels off the surface
            gt |= ball(center + np.array([0, 0, int(radius) + 4]), 1.0)
        if rng.random() < 0.75:
            pred |= ball(center + rng.integers(-1, 2, size=3), max(1.0, radius + rng.uniform(-1, 1)))
    for _ in range(rng.integers(1, 3)):
        pred |= ball(rng.integers(3, side - 3, size=3), rng.uniform(0.8, 2.0))
    return pred, gt


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_reference_on_random_volumes(seed):
    pred, gt = random_case(seed)
    spacing = [(1.0, 1.0, 1.0), (1.2, 1.0, 0.8), (2.0, 1.0, 1.0)][seed % 3]
    for name in ("BraTS-GLI", "BraTS-MET"):  # dilation 3 / threshold 50 and dilation 1 / threshold 2
        settings = CHALLENGE_SETTINGS[name]
        got = lesionwise_region_scores(pred, gt, spacing, settings)
        want = ref.region_scores(pred, gt, spacing, settings.dilation_factor, settings.lesion_volume_thresh)
        assert got["tp"] + got["fn"] + got["fp"] >= 3  # several lesions really were compared
        assert (got["tp"], got["fp"], got["fn"]) == (want["tp"], want["fp"], want["fn"])
        for key in ("lesion_dice", "dice", "nsd"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), (name, key)
        for key in ("lesion_hd95", "hd95"):
            assert got[key] == pytest.approx(want[key], abs=1e-3), (name, key)


def brats2023_case() -> np.ndarray:
    labels = np.zeros((N, N, N), dtype=np.uint8)
    labels[8:24, 8:24, 8:24] = 2  # oedema
    labels[12:20, 12:20, 12:20] = 1  # necrotic core
    labels[14:18, 14:18, 14:18] = 3  # enhancing, 64 voxels
    return labels


def test_case_scores_keys_conventions_and_a_missed_region():
    gt = brats2023_case()
    scores = lesionwise_case_scores(gt, gt, convention="brats2023")
    expected_keys = {f"{m}_{r}" for m in lw.REGION_METRICS for r in ("wt", "tc", "et")}
    assert set(scores) == expected_keys | {"lesion_dice_mean", "lesion_hd95_mean"}
    assert all(scores[f"lesion_dice_{r}"] == 1.0 and scores[f"tp_{r}"] == 1 for r in ("wt", "tc", "et"))
    # the same tissues written in the 2021 labels (ET = 4), channel-first as MONAI loads them
    pred = np.where(gt == 3, 4, gt)[None]
    assert lesionwise_case_scores(pred, gt, "brats2023", pred_convention="brats2021") == scores
    # ET predicted as necrosis: TC and WT unchanged, ET missed
    missed = lesionwise_case_scores(np.where(gt == 3, 1, gt), gt, convention="brats2023")
    assert (missed["lesion_dice_et"], missed["lesion_hd95_et"], missed["fn_et"]) == (0.0, 374.0, 1)
    assert missed["lesion_dice_tc"] == missed["lesion_dice_wt"] == 1.0
    assert missed["lesion_dice_mean"] == pytest.approx(2 / 3, abs=1e-6)
    assert missed["lesion_hd95_mean"] == pytest.approx(374 / 3, abs=1e-3)
    with pytest.raises(ValueError, match="shape"):
        lesionwise_case_scores(gt[:-1], gt, convention="brats2023")


def test_settings_presets_and_validation():
    assert GLI == LesionwiseSettings(3, 50, 374.0, 1.0)
    official = {
        "BraTS-GLI": (3, 50),
        "BraTS-SSA": (3, 50),
        "BraTS-MEN": (1, 50),
        "BraTS-PED": (3, 50),
        "BraTS-MET": (1, 2),
    }
    assert {k: (s.dilation_factor, s.lesion_volume_thresh) for k, s in CHALLENGE_SETTINGS.items()} == official
    with pytest.raises(ValueError):
        LesionwiseSettings(dilation_factor=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        GLI.dilation_factor = 1  # type: ignore[misc]
    # no dilation: islands one voxel apart stay two lesions
    two = volume((5, 9, 5, 9, 5, 9), (10, 14, 5, 9, 5, 9))
    scores = lesionwise_region_scores(two, two, settings=LesionwiseSettings(0, 50))
    assert scores["tp"] == 2


def test_box_plots_write_one_png_per_metric(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"{m}_{r}" for m in ("lesion_dice", "lesion_hd95") for r in ("wt", "tc", "et")]
    rows = [{key: float(rng.random()) for key in keys} for _ in range(6)]
    paths = box_plots(rows, ["lesion_dice", "lesion_hd95"], tmp_path / "plots")
    assert [p.name for p in paths] == ["lesion_dice.png", "lesion_hd95.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="no values"):
        box_plots(rows, ["nsd"], tmp_path)
