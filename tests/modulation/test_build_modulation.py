"""``build_modulation``: each method built from its own block of settings, every block checked against its
method's handler whatever the run's method, each mistake one line naming the config id; and the same
through a bundle, as users override it (``--cggm#lambda 0.2``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from toy_multimodal import accuracy, make_models

from cggm_seg.errors import UserError
from cggm_seg.modulation import (
    METHODS,
    CGGMHandler,
    MSLRHandler,
    OGMGEHandler,
    UnimodalHandler,
    block_flags,
    build_modulation,
    method_settings,
)
from cggm_seg.preflight import user_error_in

BRATS_TRAIN = Path(__file__).resolve().parents[2] / "bundles" / "brats_cggm" / "configs" / "train.json"
#: a block for each method, as a bundle writes them
BLOCKS = {
    "cggm": {"rho": 1.2, "lambda": 0.3, "direction": "weights", "magnitude": True},
    "ogm_ge": {"alpha": 0.3, "gaussian_noise": False},
    "mslr": {"lr_scales": {"t1ce": 0.5}},
    "unimodal": {"modality": "t1ce"},
}


def wiring(heads) -> dict:
    """What a bundle's ``modulation_handler`` passes whatever the method: the network's and the task's."""
    return {
        "encoders": ["encoders.0", "encoders.1"],
        "fusion_layer": "output_layer",
        "heads": heads,
        "head_optimizer": torch.optim.SGD(heads.parameters(), lr=0.1),
        "metric": accuracy,
        "modality_names": ["flair", "t1ce"],
        "noise_seed": 3,
    }


def build(method: str, blocks: dict | None = None, **changes):
    _, heads = make_models()
    return build_modulation(method, BLOCKS if blocks is None else blocks, **{**wiring(heads), **changes})


def refused(message: str, method: str = "none", blocks: dict | None = None, **changes) -> None:
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        build(method, blocks, **changes)


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("none", type(None)),
        ("cggm", CGGMHandler),
        ("ogm_ge", OGMGEHandler),
        ("mslr", MSLRHandler),
        ("unimodal", UnimodalHandler),
    ],
)
def test_each_method_builds_from_its_block_and_the_wiring_it_takes(method, kind):
    handler = build(method)
    assert type(handler) is kind
    if method == "cggm":
        assert (handler.rho, handler.lam, handler.direction) == (1.2, 0.3, "weights")
        assert handler.modality_names == ["flair", "t1ce"]
    if method == "ogm_ge":
        assert (handler.alpha, handler.gaussian_noise, handler.noise_seed) == (0.3, False, 3)
    if method == "mslr":
        assert handler.lr_scales == [1.0, 0.5]
    if method == "unimodal":
        assert handler.index == 1


def test_a_method_without_a_block_gets_its_handlers_defaults():
    handler = build("ogm_ge", {"cggm": BLOCKS["cggm"]})
    assert (handler.alpha, handler.gaussian_noise) == (0.5, True)


@pytest.mark.parametrize("method", [m for m, handler in METHODS.items() if handler is not None])
@pytest.mark.parametrize("running", ["none", "cggm"])
def test_a_typo_in_any_block_is_refused_whichever_method_runs(method, running):
    takes = ", ".join(sorted(method_settings(method)))
    refused(
        f"{method}#lamda: not a setting of {method} (it takes {takes})",
        running,
        {**BLOCKS, method: {**BLOCKS[method], "lamda": 0.2}},
    )


@pytest.mark.parametrize(
    ("block", "setting"),
    [
        ("cggm", "alpha"),
        ("ogm_ge", "lambda"),
        ("ogm_ge", "rho"),
        ("mslr", "modality"),
        ("unimodal", "lr_scales"),
    ],
)
def test_a_setting_of_another_method_is_refused(block, setting):
    refused(
        f"{block}#{setting}: not a setting of {block} (it takes ",
        "cggm",
        {**BLOCKS, block: {**BLOCKS[block], setting: 0.5}},
    )


def test_wiring_and_argument_spellings_are_not_settings():
    refused("cggm#heads: not a setting of cggm", blocks={"cggm": {"heads": None}})
    refused(
        "cggm#lam: not a setting of cggm (it takes apply_to, coeff_clip, coefficient_rule, direction, "
        "direction_scale, improvement_window, lambda, magnitude, rho, ",
        blocks={"cggm": {"lam": 0.1}},
    )
    refused(
        "ogm_ge#noise_seed: not a setting of ogm_ge (it takes alpha, gaussian_noise, warmup_iterations)",
        blocks={"ogm_ge": {"noise_seed": 1}},
    )


def test_booleans_read_as_users_write_them():
    assert build("cggm", {"cggm": {"magnitude": "false"}}).rho is None
    assert build("ogm_ge", {"ogm_ge": {"gaussian_noise": "off"}}).gaussian_noise is False
    refused(
        "cggm#magnitude: 'maybe' is not a boolean; write true or false",
        blocks={"cggm": {"magnitude": "maybe"}},
    )


@pytest.mark.parametrize(
    ("method", "block", "message"),
    [
        ("cggm", {"rho": -1.0}, "cggm#rho: must be > 0"),
        ("cggm", {"lambda": -0.1}, "cggm#lambda: must be >= 0"),
        ("ogm_ge", {"alpha": 0}, "ogm_ge#alpha: OGM-GE needs alpha > 0"),
        ("mslr", {"lr_scales": {"t2": 0.5}}, "mslr#lr_scales: unknown modalities ['t2']"),
        ("unimodal", {"modality": "t2"}, "unimodal#modality: 't2' is neither one of"),
    ],
)
def test_a_value_the_handler_refuses_is_named_by_its_config_id(method, block, message):
    refused(message, method, {method: block})
    refused("modulation_handler#heads: 3 heads for 2 encoders", "cggm", {}, heads=make_models(3)[1])


def test_block_flags_are_a_blocks_booleans_once_the_whole_block_is_checked():
    assert block_flags("cggm", {"rho": 1.0, "magnitude": "no"}) == {"magnitude": False}
    assert block_flags("ogm_ge", {"alpha": 0.5}) == {}
    with pytest.raises(UserError, match="^cggm#lamda: not a setting of cggm"):
        block_flags("cggm", {"magnitude": True, "lamda": 0.1})


def test_mistakes_outside_the_blocks_name_their_config_id():
    refused("modulation: 'ogm' is not one of ['none', 'cggm', 'ogm_ge', 'mslr', 'unimodal']", "ogm")
    refused(
        "modulation_handler#settings#ogm: not a method with settings (cggm, ogm_ge, mslr, unimodal)",
        blocks={"ogm": {"alpha": 0.5}},
    )
    refused("modulation_handler#settings#none: not a method with settings", blocks={"none": {}})
    refused("cggm: expected a block of cggm's settings ({name: value}), got 0.2", blocks={"cggm": 0.2})
    refused("modulation_handler#rho: not one of the network's and task's arguments", rho=1.0)
    refused("mslr#lr_scales: missing; mslr needs it", "mslr", {})
    with pytest.raises(UserError, match="^modulation_handler#heads: missing; cggm needs it$"):
        build_modulation("cggm", {}, encoders=["encoders.0", "encoders.1"], fusion_layer="output_layer")


# ---------------------------------------------------------------------------------- through a bundle
@pytest.fixture
def brats() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BRATS_TRAIN))
    parser.update({"device": "cpu", "network_def#channels": [4, 8, 16, 32]})
    return parser


def test_bundle_overrides_reach_the_handler(brats):
    brats.update({"cggm#lambda": 0.2, "cggm#magnitude": "false"})
    handler = brats.get_parsed_content("modulation_handler")
    assert (handler.lam, handler.rho) == (0.2, None)
    brats.update({"modulation": "ogm_ge", "ogm_ge#alpha": 0.8})
    assert brats.get_parsed_content("modulation_handler", lazy=False).alpha == 0.8
    brats.update({"modulation": "unimodal", "unimodal#modality": "t2"})
    assert brats.get_parsed_content("modulation_handler", lazy=False).index == 3


@pytest.mark.parametrize("checked_by", ["flags", "modulation_handler"])
def test_a_bundle_override_with_a_typo_is_one_line_naming_it(brats, checked_by):
    """``flags`` (settled before a run writes anything) finds it first; the factory would too."""
    brats["cggm#lamda"] = 0.2
    with pytest.raises(Exception) as caught:
        brats.get_parsed_content(checked_by)
    assert str(user_error_in(caught.value)).startswith("cggm#lamda: not a setting of cggm (it takes ")
