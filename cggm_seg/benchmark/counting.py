"""Count what a piece of torch work costs without running it: FLOPs, bytes saved for backward, peak bytes.

The work runs on fake tensors (``torch._subclasses.FakeTensorMode``): every op computes shapes and
dtypes only, so a 128^3 training step counts in seconds and a few hundred MB of host memory, and the
counts are the same on every machine. Modules keep their real (small) parameters; everything computed
from the data is fake. Two things make real code run this way:

* values read back from fake tensors (``.item()``, ``.tolist()``, ``bool()``) read as 0 / ``False``:
  they steer only value-dependent branches (a metric, a coefficient), not what is allocated;
* tensors computed from real tensors only and small (at most :data:`SMALL` elements: index lists,
  reduction axes, shape arithmetic) are computed for real, so code that reads them gets their values.

Counted (:class:`MemoryCount`): each storage once, however many views or ops share it, and a
storage freed and a later one at the same address as two. *Saved* is what autograd's
``saved_tensors_hooks`` receive, parameters excluded (they are held anyway); *live* is every tensor
an op returns, plus those registered with :meth:`MemoryCount.hold`, until it is freed, read after
every op. Temporaries inside one op (kernel workspaces) are not seen. FLOPs (:class:`FlopCount`) are
torch's formulas for convolutions and matrix products, the same as ``FlopCounterMode``'s.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

#: tensors computed from real tensors alone and at most this many elements are computed for real
SMALL = 4096


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


class _ShapeValues(TorchDispatchMode):
    """Reads of fake values give 0; small results of real-only inputs are computed for real."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        fake_input = any(isinstance(t, FakeTensor) for t in _tensors((args, kwargs)))
        if func is torch.ops.aten._local_scalar_dense.default and fake_input:
            value = args[0]
            return False if value.dtype == torch.bool else (0.0 if value.is_floating_point() else 0)
        out = func(*args, **kwargs)
        if not fake_input and all(t.numel() <= SMALL for t in _tensors(out)):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return out


class ShapeOnly:
    """Run torch work on fake tensors: ``shapes = ShapeOnly(); x = shapes.empty(...); with shapes: ...``.

    Modules built outside keep real parameters; their gradients and optimizer states come out fake.
    """

    def __init__(self) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._stack = contextlib.ExitStack()

    def empty(self, *shape: int) -> torch.Tensor:
        """A float32 fake CPU tensor of ``shape`` (no memory), made before the block, usable in it."""
        with self.mode:
            return torch.empty(*shape)

    def __enter__(self) -> ShapeOnly:
        self._stack.enter_context(self.mode)
        self._stack.enter_context(_ShapeValues())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)


class _Storages:
    """Storages counted once each, by their C++ address, as long as they are alive.

    ``now`` counts the freed storages until :meth:`sweep` forgets them, so it is an upper bound of the
    bytes alive: a peak needs a sweep only when ``now`` exceeds it (the sweep is what costs).
    """

    def __init__(self) -> None:
        self._alive: dict[int, tuple[StorageWeakRef, int]] = {}
        self.now = 0
        self.peak = 0

    def add(self, tensor: torch.Tensor) -> bool:
        """Count ``tensor``'s storage; ``False`` if it is counted already."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        known = self._alive.get(key)
        if known is not None and not known[0].expired():
            return False
        if known is not None:
            self.now -= known[1]
        self._alive[key] = (StorageWeakRef(storage), storage.nbytes())
        self.now += storage.nbytes()
        return True

    def sweep(self) -> int:
        """Forget the freed storages; the bytes of those alive."""
        for key in [k for k, (ref, _) in self._alive.items() if ref.expired()]:
            self.now -= self._alive.pop(key)[1]
        return self.now

    def update_peak(self) -> None:
        if self.now > self.peak:
            self.peak = max(self.peak, self.sweep())

    def restart(self) -> None:
        """The peak from now on."""
        self.peak = self.sweep()

    def forget(self) -> None:
        """Count from nothing again."""
        self._alive.clear()
        self.now = self.peak = 0


class MemoryCount(TorchDispatchMode):
    """Peak live bytes, and bytes saved for backward (peak alive and total), of the work in its block.

    ``restart()`` (e.g. after a warm-up iteration) keeps what is alive and counts the peaks and the
    total again from there. Python's cyclic garbage collector is paused inside the block, so what is
    freed, and when, does not depend on when it would have run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live = _Storages()
        self._saved = _Storages()
        self.saved_total_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def peak_bytes(self) -> int:
        return self._live.peak

    @property
    def saved_peak_bytes(self) -> int:
        return self._saved.peak

    def hold(self, *tensors: torch.Tensor) -> None:
        """Count tensors made before the block (the batch, the parameters) as live."""
        for tensor in tensors:
            self._live.add(tensor)
        self._live.update_peak()

    def restart(self, *_: Any) -> None:
        """Count the peaks and the saved bytes of the work from here on; what is alive stays live."""
        self._live.restart()
        self._saved.forget()
        self.saved_total_bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if not (tensor.requires_grad and tensor.is_leaf) and self._saved.add(tensor):
            self.saved_total_bytes += tensor.untyped_storage().nbytes()
            self._saved.update_peak()
        return tensor

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func._schema.is_mutable:  # in-place and out= ops allocate nothing new
            for tensor in _tensors(out):
                self._live.add(tensor)
            self._live.update_peak()
        return out

    def __enter__(self) -> MemoryCount:
        gc.collect()
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self._hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._hooks.__exit__(*exc)
        if self._gc_was_enabled:
            gc.enable()


class FlopCount(TorchDispatchMode):
    """FLOPs of the work in its block, by torch's own formulas (``torch.utils.flop_counter``'s registry:
    convolutions and matrix products), without ``FlopCounterMode``'s module hooks, which change the
    order in which autograd runs independent branches and with it the memory peak."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def restart(self, *_: Any) -> None:
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages among ``tensors`` (any nesting of lists, tuples and dicts)."""
    seen: dict[int, int] = {}
    for tensor in _tensors(tensors):
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())
