"""The `cggm-seg` entry point: deprecated spellings still work for one more release, with a warning."""

import pytest

from cggm_seg import cli


@pytest.mark.parametrize(
    "argv, current",
    [
        (["bench", "overhead", "--help"], "cggm-seg benchmark"),
        (["benchmark", "--help-not-an-option"], "cggm-seg benchmark balance"),
    ],
)
def test_deprecated_spellings_warn_and_name_the_current_one(argv, current):
    expected = f"deprecated since 0.6.0 and will be removed in 0.7.0; use `{current}`"
    with pytest.warns(FutureWarning, match=expected):
        rewritten = cli._canonical(argv)
    assert rewritten[:2] == ["benchmark", "overhead" if argv[0] == "bench" else "balance"]


def test_current_spellings_do_not_warn(recwarn):
    argv = ["benchmark", "overhead", "--steps", "2"]
    assert cli._canonical(argv) == argv
    assert cli._canonical(["benchmark", "--help"]) == ["benchmark", "--help"]
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
