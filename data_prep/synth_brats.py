"""Synthetic BraTS phantoms in the real file layouts, for the demo, the tests and imbalance experiments.

Each case is a brain-shaped volume (white and grey matter, ventricles, texture, a smooth bias field,
Gaussian noise, zero background as after skull stripping) holding one tumour: a necrotic core inside
an enhancing rim inside oedema, all with irregular outlines. As on real BraTS, every sequence shows
part of the tumour and none shows all of it, so a model has to combine them:

=========  ==================================  =======================================
sequence   shows                               hides
FLAIR      whole tumour, bright                core vs oedema (all about equally bright)
T1         tumour faintly dark                 enhancing rim vs necrosis vs oedema
T1ce       enhancing rim bright, necrosis dark oedema (close to normal tissue)
T2         whole tumour bright, necrosis       enhancing rim (as bright as oedema)
=========  ==================================  =======================================

``noise`` sets a sequence's Gaussian noise (standard deviation in units of T1 white matter) and
``contrast`` scales its lesion contrast (0 hides the tumour in that sequence, 2 doubles it), so that
one sequence can be made more or less informative than the others. A sequence named in ``texture``
shows the lesion with a random sign at every voxel: as texture, not brightness, so a network must
build a nonlinear feature (local contrast energy) to see it, and learns it slowly. ``misplaced``
gives, per sequence, the share of cases in which that sequence shows the tumour in the wrong place
(shifted by half the volume front to back) and nothing where it is: a clean sequence with a small
``misplaced`` share is a fast but partial shortcut, as a mostly-right modality is in classification.
One draw per case decides for every sequence, so sequences given the same share misplace the tumour
in the same cases (a smaller share picks a subset of a larger one's cases): several clean sequences
then make one consistent shortcut, wrong in the same cases, instead of correcting each other.
Case ``i`` of seed ``s`` is drawn from its own generator seeded by ``(s, i)``: it does not depend on
how many cases are written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from cggm_seg.brats_labels import CONVENTIONS, SEQUENCES
from cggm_seg.errors import UserError
from data_prep.brats_datalist import FOLDER_LAYOUTS, LABEL_KEY, LAYOUTS, MSD_IMAGES, MSD_LABELS, atomic_output

MIN_SIZE = 16  # below this a tumour's three regions no longer fit reliably
DEFAULT_NOISE = 0.04
DEFAULT_CONTRAST = 1.0

# Intensity of each tissue in each sequence, relative to T1 white matter; loosely after real MRI.
_TISSUES = ("wm", "gm", "csf", "oedema", "enhancing", "necrosis")
_INTENSITY = {
    "flair": (0.55, 0.70, 0.15, 1.25, 1.25, 1.21),
    "t1": (1.00, 0.78, 0.25, 0.64, 0.62, 0.58),
    "t1ce": (1.00, 0.78, 0.25, 0.94, 1.70, 0.35),
    "t2": (0.45, 0.65, 1.50, 1.15, 1.13, 1.45),
}
_GAIN = {"flair": 450.0, "t1": 600.0, "t1ce": 700.0, "t2": 900.0}  # scanner-like value ranges
_WM, _GM, _CSF, _OEDEMA, _ENHANCING, _NECROSIS = range(len(_TISSUES))
_PLACEMENT_TRIES = 100
_BRAIN_RADII = np.array([0.80, 0.92, 0.74])  # semi-axes (left-right, front-back, up-down), volume = [-1, 1]^3


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance random field with about ``cells`` bumps along each axis.

    A lattice of Gaussian bumps of random height, one per cell (plus a ring outside the volume so
    the edges are no calmer than the middle). The bumps are separable, so the field costs three
    small matrix products instead of a 3-D filter, and it looks the same at any ``size``.
    """
    centres = (np.arange(-1, cells + 1, dtype=np.float32) + 0.5) / cells
    voxels = (np.arange(size, dtype=np.float32) + 0.5) / size
    basis = np.exp(-0.5 * ((voxels[:, None] - centres[None, :]) * cells) ** 2)
    heights = rng.standard_normal((cells + 2,) * 3, dtype=np.float32)
    field = np.einsum("ia,jb,kc,abc->ijk", basis, basis, basis, heights, optimize=True)
    return (field - field.mean()) / field.std()


def _ellipsoid_radius(grid: tuple[np.ndarray, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised distance from ``centre``: 1 on the surface of the ellipsoid with semi-axes ``radii``."""
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)))


def _anatomy(
    rng: np.random.Generator, grid: tuple[np.ndarray, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask and healthy tissue map (white matter, cortex, ventricles) of a wobbly ellipsoid brain."""
    radii = _BRAIN_RADII * rng.uniform(0.92, 1.0, 3)
    radius = _ellipsoid_radius(grid, np.zeros(3), radii) + 0.05 * _smooth_field(rng, size, 4)
    brain = radius < 1.0
    tissue = np.full(brain.shape, _WM, dtype=np.uint8)
    tissue[radius > 0.78 + 0.05 * _smooth_field(rng, size, 20)] = _GM
    ventricle_radii = np.array([0.06, 0.26, 0.12]) * rng.uniform(0.8, 1.2, 3)
    for side in (-1.0, 1.0):
        ventricle = np.array([side * 0.11, 0.02, 0.10]) * radii
        tissue[_ellipsoid_radius(grid, ventricle, ventricle_radii) < 1.0] = _CSF
    return brain, tissue


def _tumour(
    rng: np.random.Generator, grid: tuple[np.ndarray, ...], size: int, brain: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nested whole-tumour, core and necrosis masks: three irregular, concentric level sets."""
    centre = rng.uniform(-0.45, 0.45, 3) * _BRAIN_RADII
    spread = _ellipsoid_radius(grid, centre, rng.uniform(0.26, 0.40, 3))
    core_level = rng.uniform(0.45, 0.70)
    necrosis_level = core_level * rng.uniform(0.35, 0.65)
    whole = brain & (spread + 0.3 * _smooth_field(rng, size, 16) < 1.0)
    core = whole & (spread + 0.15 * _smooth_field(rng, size, 16) < core_level)
    necrosis = core & (spread + 0.08 * _smooth_field(rng, size, 12) < necrosis_level)
    return whole, core, necrosis


def _sequence_settings(values: dict[str, float] | None, default: float, what: str) -> dict[str, float]:
    """``default`` for every sequence, overridden by ``values``; a clear error for a bad name or value."""
    values = values or {}
    unknown = sorted(set(values) - set(SEQUENCES))
    if unknown:
        raise UserError(f"{what}: unknown sequence(s) {unknown}; expected names from {list(SEQUENCES)}")
    bad = {k: v for k, v in values.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise UserError(f"{what}: {bad} must be finite and >= 0")
    return {s: float(values.get(s, default)) for s in SEQUENCES}


def _shares(values: dict[str, float] | None) -> dict[str, float]:
    """Per-sequence ``misplaced`` shares (0 unless given); a clear error for a bad name or share."""
    shares = _sequence_settings(values, 0.0, "misplaced")
    bad = {k: v for k, v in shares.items() if v > 1}
    if bad:
        raise UserError(f"misplaced: {bad} must be shares between 0 and 1")
    return shares


def _texture_sequences(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``names`` as a tuple; a clear error for a name that is not a sequence."""
    unknown = sorted(set(names) - set(SEQUENCES))
    if unknown:
        raise UserError(f"texture: unknown sequence(s) {unknown}; expected names from {list(SEQUENCES)}")
    return tuple(names)


def _misplaced_lesion(healthy: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The tissue map with the tumour half a volume away (front to back): what a misplacing sequence shows."""
    shifted = np.roll(lesion, lesion.shape[1] // 2, axis=1)
    moved = brain & (shifted >= _OEDEMA)
    elsewhere = healthy.copy()
    elsewhere[moved] = shifted[moved]
    return elsewhere


def synth_case(
    rng: np.random.Generator,
    size: int,
    noise: dict[str, float] | None = None,
    contrast: dict[str, float] | None = None,
    texture: tuple[str, ...] = (),
    misplaced: dict[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One phantom: float32 images by sequence (``SEQUENCES`` order) and a brats2021 label map (uint8).

    The tumour is redrawn until its three regions are all present, so every case has WT, TC and ET.
    The random draws do not depend on ``noise``, ``contrast``, ``texture`` or ``misplaced``: two calls
    that differ only in one sequence's setting give the same anatomy, tumour and other sequences (the
    texture's signs and the misplacement draws come from generators spawned from ``rng``, which leave
    ``rng``'s own draws unchanged).
    """
    noise = _sequence_settings(noise, DEFAULT_NOISE, "noise")
    contrast = _sequence_settings(contrast, DEFAULT_CONTRAST, "contrast")
    texture = _texture_sequences(texture)
    misplaced = _shares(misplaced)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    grid = (axis[:, None, None], axis[None, :, None], axis[None, None, :])
    brain, healthy = _anatomy(rng, grid, size)
    for _ in range(_PLACEMENT_TRIES):
        whole, core, necrosis = _tumour(rng, grid, size, brain)
        enhancing = core & ~necrosis
        if (whole & ~core).any() and enhancing.any() and necrosis.any():
            break
    else:
        raise RuntimeError(f"no tumour with all three regions in {_PLACEMENT_TRIES} tries at size {size}")
    lesion = healthy.copy()
    lesion[whole] = _OEDEMA
    lesion[enhancing] = _ENHANCING
    lesion[necrosis] = _NECROSIS
    tissue_texture = 1.0 + 0.04 * _smooth_field(rng, size, 12)
    sign_rng, place_rng = rng.spawn(2)
    elsewhere = _misplaced_lesion(healthy, lesion, brain) if any(misplaced.values()) else None
    place = place_rng.random()  # one draw per case: sequences with the same share misplace together
    images = {}
    for name in SEQUENCES:
        table = np.asarray(_INTENSITY[name], dtype=np.float32)
        normal = table[healthy]
        shown = elsewhere if place < misplaced[name] else lesion
        difference = contrast[name] * (table[shown] - normal)
        if name in texture:
            signs = sign_rng.choice(np.array([-1.0, 1.0], dtype=np.float32), difference.shape)
            difference = difference * signs
        clean = (normal + difference) * tissue_texture
        clean = ndimage.gaussian_filter(clean, 0.6)  # partial volume at tissue borders
        bias = np.exp(0.1 * _smooth_field(rng, size, 3))
        noisy = np.abs(clean * bias + noise[name] * rng.standard_normal(clean.shape, dtype=np.float32))
        images[name] = np.where(brain, noisy * _GAIN[name], 0.0).astype(np.float32)
    masks = np.stack([core, whole, enhancing])  # REGIONS order (TC, WT, ET)
    return images, CONVENTIONS["brats2021"].label_map(masks)


def brats_affine(size: int) -> np.ndarray:
    """1 mm isotropic, LPS-flipped axes and a nonzero origin, as in the BraTS 2021 release."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = size - 1
    return affine


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_output(path) as tmp:
        nib.save(image, tmp)


def case_id(layout: str, index: int) -> str:
    """The name the real release gives case ``index`` (MSD counts from 1)."""
    return {
        "brats2021": f"BraTS2021_{index:05d}",
        "brats2023": f"BraTS-GLI-{index:05d}-000",
        "msd": f"BRATS_{index + 1:03d}",
    }[layout]


def write_case(
    out: Path, layout: str, index: int, images: dict[str, np.ndarray], label: np.ndarray, affine: np.ndarray
) -> Path:
    """Write one case in ``layout``; returns its folder (folder layouts) or its 4-D image (MSD)."""
    name = case_id(layout, index)
    label = CONVENTIONS[layout].label_map(CONVENTIONS["brats2021"].region_masks(label))
    if layout == "msd":
        image_path = out / MSD_IMAGES / f"{name}.nii.gz"
        _save_nifti(np.stack([images[s] for s in SEQUENCES], axis=-1), affine, image_path)
        _save_nifti(label, affine, out / MSD_LABELS / f"{name}.nii.gz")
        return image_path
    folder_layout = FOLDER_LAYOUTS[layout]
    folder = out / name
    folder.mkdir(exist_ok=True)
    for sequence in SEQUENCES:
        _save_nifti(images[sequence], affine, folder / folder_layout.file_name(name, sequence))
    _save_nifti(label, affine, folder / folder_layout.file_name(name, LABEL_KEY))
    return folder


def _msd_description(cases: int) -> dict:
    """A ``dataset.json`` shaped like the one shipped with MSD Task01_BrainTumour."""
    names = [case_id("msd", i) for i in range(cases)]
    return {
        "name": "BRATS",
        "description": "Synthetic gliomas in the MSD Task01 layout (cggm-seg synth brats)",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": cases,
        "numTest": 0,
        "training": [
            {"image": f"./{MSD_IMAGES}/{n}.nii.gz", "label": f"./{MSD_LABELS}/{n}.nii.gz"} for n in names
        ],
        "test": [],
    }


def write_brats_dataset(
    out: Path,
    cases: int,
    size: int,
    seed: int,
    layout: str = "brats2021",
    noise: dict[str, float] | None = None,
    contrast: dict[str, float] | None = None,
    force: bool = False,
    texture: tuple[str, ...] = (),
    misplaced: dict[str, float] | None = None,
) -> list[Path]:
    """Write ``cases`` phantoms of ``size``^3 voxels under ``out`` in ``layout``; one path per case.

    Refuses a non-empty ``out`` unless ``force``; even then it only replaces the files it writes.
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise UserError(f"layout {layout!r} is unknown; expected one of {list(LAYOUTS)}")
    if cases < 1:
        raise UserError(f"cases must be at least 1, got {cases}")
    if size < MIN_SIZE:
        raise UserError(f"size must be at least {MIN_SIZE} voxels, got {size}")
    noise = _sequence_settings(noise, DEFAULT_NOISE, "noise")
    contrast = _sequence_settings(contrast, DEFAULT_CONTRAST, "contrast")
    texture = _texture_sequences(texture)
    misplaced = _shares(misplaced)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; expected a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty; pass --force to write into it anyway")
    for folder in (out / MSD_IMAGES, out / MSD_LABELS) if layout == "msd" else (out,):
        folder.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(size)
    written = []
    for index in tqdm(range(cases), desc="synthesising", unit="case", disable=None):
        images, label = synth_case(
            np.random.default_rng([seed, index]), size, noise, contrast, texture, misplaced
        )
        written.append(write_case(out, layout, index, images, label, affine))
    if layout == "msd":
        with atomic_output(out / "dataset.json") as tmp:
            tmp.write_text(json.dumps(_msd_description(cases), indent=4) + "\n")
    return written


def parse_sequence_values(text: str, option: str) -> dict[str, float]:
    """``"flair=0.3,t1ce=0.05"`` -> ``{"flair": 0.3, "t1ce": 0.05}``; names and values are checked later."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            values[name.strip()] = float(value)
        except ValueError:
            raise UserError(
                f"{option}: {item!r} is not name=number (e.g. {option} flair=0.3,t1ce=2)"
            ) from None
    return values
