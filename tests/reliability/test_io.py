"""Safe pickle/npy loading and atomic output writing (cggm_seg.io)."""

from __future__ import annotations

import json
import os
import pickle
import pickletools

import numpy as np
import pytest

from cggm_seg.errors import UserError
from cggm_seg.io import (
    atomic_path,
    check_new_outputs,
    safe_load_npy,
    safe_load_pickle,
    write_json,
)


class _WritesMarker:
    """Unpickling this calls os.system: a stand-in for a malicious download."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Custom:
    pass


def _dump(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = _dump(tmp_path / "evil.pkl", {"train": {"text": _WritesMarker(str(marker))}})
    with pytest.raises(UserError) as err:
        safe_load_pickle(path)
    message = str(err.value)
    assert str(path) in message and "'posix.system'" in message
    assert not marker.exists()


@pytest.mark.parametrize("obj", [_Custom(), print, eval, np.load])
def test_classes_and_functions_are_refused(tmp_path, obj):
    path = _dump(tmp_path / "x.pkl", [obj])
    with pytest.raises(UserError, match="refused to unpickle global"):
        safe_load_pickle(path)


def test_codecs_encode_only_for_latin1(tmp_path):
    # a protocol-0 pickle calling _codecs.encode('x', 'rot13'): the whitelist must not allow other codecs
    data = b"c_codecs\nencode\n(Vx\nVrot13\ntR."
    (tmp_path / "c.pkl").write_bytes(data)
    with pytest.raises(UserError, match="not a readable pickle"):
        safe_load_pickle(tmp_path / "c.pkl")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_dict_of_numpy_arrays_round_trips(tmp_path, protocol):
    data = {
        "train": {
            "text": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "labels": np.array([[[1.5]], [[-2.0]]]),
            "ids": np.array([1, 2], dtype=np.int64),
            "raw": b"\x00\xff",
        },
        "meta": [np.float32(0.5), np.int64(3), (1, 2), {3}, frozenset({4}), None, True, "s"],
    }
    loaded = safe_load_pickle(_dump(tmp_path / "d.pkl", data, protocol))
    np.testing.assert_array_equal(loaded["train"]["text"], data["train"]["text"])
    assert loaded["train"]["text"].dtype == np.float32
    np.testing.assert_array_equal(loaded["train"]["labels"], data["train"]["labels"])
    assert loaded["train"]["raw"] == b"\x00\xff"
    assert loaded["meta"] == data["meta"]


def test_protocol_5_uses_frombuffer(tmp_path):
    data = pickle.dumps(np.ones((2, 2)), protocol=5)
    assert "_frombuffer" in "".join(str(arg) for _, arg, _ in pickletools.genops(data))
    (tmp_path / "p5.pkl").write_bytes(data)
    np.testing.assert_array_equal(safe_load_pickle(tmp_path / "p5.pkl"), np.ones((2, 2)))


def test_object_arrays_of_strings_are_allowed(tmp_path):
    # MMSA's `id` / `raw_text`: object arrays whose items are plain str
    data = {"id": np.array(["a$1", "b$2"], dtype=object), "raw_text": np.array(["hi", "yo"], dtype=object)}
    loaded = safe_load_pickle(_dump(tmp_path / "o.pkl", data, 4))
    assert loaded["id"].dtype == object and list(loaded["id"]) == ["a$1", "b$2"]


def test_numpy1_module_names_are_accepted(tmp_path):
    # numpy < 2 wrote numpy.core.multiarray._reconstruct; a numpy-2 pickle says numpy._core
    data = pickle.dumps(np.arange(3), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "np1.pkl").write_bytes(data)
    np.testing.assert_array_equal(safe_load_pickle(tmp_path / "np1.pkl"), np.arange(3))


def test_unreadable_and_missing_pickles(tmp_path):
    (tmp_path / "t.pkl").write_text("not a pickle")
    with pytest.raises(UserError, match="t.pkl: not a readable pickle"):
        safe_load_pickle(tmp_path / "t.pkl")
    with pytest.raises(UserError, match="nope.pkl: pickle file not found"):
        safe_load_pickle(tmp_path / "nope.pkl")


def test_safe_load_npy_numeric_object_and_mmap(tmp_path):
    np.save(tmp_path / "n.npy", np.arange(6).reshape(2, 3))
    np.save(tmp_path / "b.npy", np.array([[b"Ses01F_a"], [b"Ses01M_b"]]))
    np.save(tmp_path / "o.npy", np.array(["x", "yy"], dtype=object), allow_pickle=True)
    assert safe_load_npy(tmp_path / "n.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert isinstance(safe_load_npy(tmp_path / "n.npy", mmap=True), np.memmap)
    assert safe_load_npy(tmp_path / "b.npy")[1, 0] == b"Ses01M_b"
    assert safe_load_npy(tmp_path / "o.npy").tolist() == ["x", "yy"]


def test_safe_load_npy_refuses_malicious_object_array(tmp_path):
    marker = tmp_path / "marker"
    np.save(tmp_path / "evil.npy", np.array([_WritesMarker(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="refused to unpickle global"):
        safe_load_npy(tmp_path / "evil.npy")
    assert not marker.exists()
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.npy: not a readable .npy file"):
        safe_load_npy(tmp_path / "bad.npy")


def test_write_json_refuses_to_overwrite_and_writes_null_for_nan(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json(path, {"acc": np.float64(0.5), "corr": float("nan")})
    assert json.loads(path.read_text()) == {"acc": 0.5, "corr": None}
    with pytest.raises(UserError, match="m.json already exists; pass --force"):
        write_json(path, {})
    write_json(path, {"acc": 1}, overwrite=True)
    assert json.loads(path.read_text()) == {"acc": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]  # no temporary left


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "shared.json", {})
        os.umask(0o077)
        write_json(tmp_path / "private.json", {})
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_check_new_outputs(tmp_path):
    (tmp_path / "a").write_text("")
    assert check_new_outputs([tmp_path / "b"])
    assert check_new_outputs([tmp_path / "a"], overwrite=True)
    with pytest.raises(UserError, match="already exists"):
        check_new_outputs([tmp_path / "b", tmp_path / "a"])
