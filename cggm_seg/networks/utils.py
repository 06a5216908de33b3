"""Network utilities every handler and analysis shares: find named sub-modules through DDP wrappers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cggm_seg.errors import UserError


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel, so settings can name sub-modules without ``module.``."""
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def submodule(root: nn.Module, name: str, setting: str) -> nn.Module:
    """``root.get_submodule(name)`` with a one-line error naming the config ``setting``."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in root.named_children()]
        raise UserError(
            f"{setting}: no sub-module named {name!r} in {type(root).__name__} "
            f"(its top-level sub-modules are {children})"
        ) from None


def encoder_parameters(network: nn.Module, names: Sequence[str]) -> list[list[nn.Parameter]]:
    """The trainable parameters of each named encoder of ``network`` (DDP unwrapped), in order."""
    root = unwrap(network)
    return [[p for p in submodule(root, n, "encoders").parameters() if p.requires_grad] for n in names]
