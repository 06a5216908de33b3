"""The shortcut IEMOCAP data set: loads as IEMOCAP, and its modalities are as (un)reliable as specified."""

from __future__ import annotations

import numpy as np
import pytest

from cggm_seg.adapters.iemocap import load_iemocap
from cggm_seg.errors import UserError
from data_prep.synth_shortcut import ShortcutSpec, _projections, make_shortcut_iemocap, write_shortcut_iemocap

N, SEED = 2000, 3


@pytest.fixture(scope="module")
def data():
    return make_shortcut_iemocap(N, SEED)


def _classes(split):
    return split["labels"][:, :, 1].argmax(axis=1)


def _nearest_centroid(data, names):
    """Test accuracy of nearest class centroid (fit on train) on time-averaged, concatenated features."""

    def features(split):
        return np.concatenate([data[split][name].mean(axis=1) for name in names], axis=1)

    train, labels = features("train"), _classes(data["train"])
    centroids = np.stack([train[labels == c].mean(axis=0) for c in range(4)])
    test = features("test")
    predicted = ((test[:, None] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)
    return float((predicted == _classes(data["test"])).mean())


def test_pickle_loads_as_iemocap(tmp_path):
    path = tmp_path / "iemocap_shortcut.pkl"
    assert write_shortcut_iemocap(path, 40, 0) == {"train": 40, "valid": 13, "test": 13}
    data = load_iemocap(path)
    assert data["train"].feature_dims() == {"text": 16, "audio": 8, "vision": 8}
    shapes = [tuple(data["test"][0][name].shape) for name in ("text", "audio", "vision")]
    assert shapes == [(10, 16), (16, 8), (12, 8)]
    assert np.bincount(data["train"].labels, minlength=4).tolist() == [10, 10, 10, 10]
    with pytest.raises(UserError):
        write_shortcut_iemocap(path, 40, 0)
    write_shortcut_iemocap(path, 20, 0, force=True)
    assert len(load_iemocap(path)["train"]) == 20


def test_held_out_sets_the_valid_and_test_sizes_only():
    data = make_shortcut_iemocap(40, 0, held_out=30)
    assert {split: len(arrays["labels"]) for split, arrays in data.items()} == {
        "train": 40,
        "valid": 30,
        "test": 30,
    }
    np.testing.assert_array_equal(data["train"]["audio"], make_shortcut_iemocap(40, 0)["train"]["audio"])
    with pytest.raises(UserError, match="held_out"):
        make_shortcut_iemocap(40, 0, held_out=1)


@pytest.mark.parametrize("rate", [0.8, 0.5, 1.0, 0.0])
def test_text_shows_the_true_class_at_shortcut_rate(rate):
    spec = ShortcutSpec(shortcut_rate=rate)
    data = make_shortcut_iemocap(N, SEED, spec)
    codes = spec.text_strength * _projections(spec, np.random.default_rng(SEED))["text"]
    offsets = []
    for split in data.values():
        distances = ((split["text"].mean(axis=1)[:, None] - codes[None]) ** 2).sum(axis=-1)
        shown, labels = distances.argmin(axis=1), _classes(split)
        assert abs((shown == labels).mean() - rate) < 0.05
        offsets.append((shown - labels)[shown != labels] % 4)
    wrong = np.concatenate(offsets)  # the wrong class shown is uniform: offsets 1, 2, 3 equally often
    if len(wrong):
        bound = 4 * np.sqrt(2 / 9 / len(wrong))  # four binomial standard deviations
        assert np.abs(np.bincount(wrong, minlength=4)[1:] / len(wrong) - 1 / 3).max() < bound


def test_unimodal_accuracies(data):
    assert abs(_nearest_centroid(data, ["text"]) - ShortcutSpec().shortcut_rate) < 0.06
    audio = _nearest_centroid(data, ["audio"])
    assert 0.4 < audio < 0.97
    assert _nearest_centroid(data, ["vision"]) < audio


def test_seed_determines_the_data(data):
    same, other = make_shortcut_iemocap(N, SEED), make_shortcut_iemocap(N, SEED + 1)
    for split, arrays in data.items():
        for key, array in arrays.items():
            np.testing.assert_array_equal(array, same[split][key])
            assert not np.array_equal(array, other[split][key])


@pytest.mark.parametrize("kwargs", [{"shortcut_rate": 1.5}, {"audio_dim": 3}, {"text_length": 0}])
def test_bad_spec(kwargs):
    with pytest.raises(UserError):
        ShortcutSpec(**kwargs)


def test_random_sign_audio_shows_the_class_only_in_its_energy():
    spec = ShortcutSpec(audio_random_sign=True, audio_strength=0.5)
    data = make_shortcut_iemocap(N, SEED, spec)
    codes = _projections(spec, np.random.default_rng(SEED))["audio"]  # [4, dim], orthogonal rows
    split = data["test"]
    projected = split["audio"] @ codes.T / np.linalg.norm(codes, axis=1)  # [N, T, 4] along each class
    labels = _classes(split)
    # the time average carries no class: every class direction averages to about 0
    assert np.abs(projected.mean(axis=1)).max(axis=1).mean() < 0.5
    assert _nearest_centroid(data, ["audio"]) < 0.4
    # the energy does: strength * sqrt(dim) squared on the true class's direction, plus the unit noise
    energy = (projected**2).mean(axis=1)
    expected = 1.0 + (spec.audio_strength * np.sqrt(spec.audio_dim)) ** 2
    assert abs(energy[np.arange(len(labels)), labels].mean() - expected) < 0.1
    others = energy[np.arange(4)[None, :] != labels[:, None]]
    assert abs(others.mean() - 1.0) < 0.1
    assert (energy.argmax(axis=1) == labels).mean() > 0.9
    # text and vision are those of the default data set with the same seed
    plain = make_shortcut_iemocap(N, SEED, ShortcutSpec(audio_strength=0.5))
    np.testing.assert_array_equal(plain["train"]["labels"], data["train"]["labels"])
