"""`cggm-seg benchmark cost`: counts on fake tensors match real ones, CGGM's overheads stay in bounds, and the
command reports every variant. Counts, not times: the results do not depend on the machine's load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from cggm_seg import cli
from cggm_seg.benchmark import cost
from cggm_seg.benchmark.counting import FlopCount, MemoryCount, ShapeOnly

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "bundles" / "brats_cggm" / "configs" / "train.json"
ROI = [32, 32, 32]


def counted_step(overrides: dict, shapes: ShapeOnly | None) -> tuple[int, MemoryCount]:
    """FLOPs and memory of the second of two steps, on real tensors (``shapes`` None) or fake ones."""
    torch.manual_seed(0)
    step = cost.BundleStep(CONFIG, overrides, [16, 16, 16], 2, 2, shapes)
    flops, memory = FlopCount(), MemoryCount()
    memory.hold(*step.batch.values(), *step.parameters())
    for counter in (flops, memory):
        step.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), counter.restart)
    with flops, memory:
        step.run()
    return flops.flops, memory


@pytest.mark.parametrize("checkpointed", [False, True])
@pytest.mark.parametrize("modulation", ["none", "cggm"])
def test_fake_counts_match_real_tensors(modulation: str, checkpointed: bool) -> None:
    overrides = {"modulation": modulation, "network_def#checkpoint_encoders": checkpointed}
    real_flops, real = counted_step(overrides, None)
    fake_flops, fake = counted_step(overrides, ShapeOnly())
    assert fake_flops == real_flops > 0
    assert fake.saved_peak_bytes == real.saved_peak_bytes > 0
    assert fake.saved_total_bytes == real.saved_total_bytes
    # autograd replays views differently on fake tensors: a few small temporaries more, never fewer
    assert real.peak_bytes <= fake.peak_bytes <= 1.05 * real.peak_bytes


def test_memory_count_sees_each_storage_once_and_frees() -> None:
    shapes, memory = ShapeOnly(), MemoryCount()
    x = shapes.empty(1024)
    memory.hold(x)
    with shapes, memory:
        y = x.view(32, 32) + 1  # the view shares x's storage; the sum is new
        del y
        z = x * 2  # may take the freed sum's address: a new storage all the same
    assert memory.peak_bytes == 2 * 4096
    assert memory.saved_total_bytes == 0 and z.shape == (1024,)


def test_shape_only_reads_fake_values_as_zero_and_computes_shape_arithmetic() -> None:
    shapes = ShapeOnly()
    x = shapes.empty(8)
    with shapes:
        assert x.sum().item() == 0.0 and not bool(x.max() > 0)
        assert torch.arange(2, 5).tolist() == [2, 3, 4]  # small and from no data: computed for real


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of the command at a small size, on the variants the targets read."""
    out = tmp_path_factory.mktemp("cost") / "cost.json"
    needed = ("joint", "cggm", cost.CHECKPOINTED, "segresnet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cost, "VARIANTS", {name: cost.VARIANTS[name] for name in needed})
        argv = ["benchmark", "cost", "--roi", "32,32,32", "--volume", "64,64,48", "--out", str(out)]
        assert cli.main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_cggm_overheads_stay_in_bounds(document: dict) -> None:
    targets = document["targets"]
    assert targets["cggm_extra_saved"] <= cost.TARGETS["cggm_extra_saved_max"]
    assert targets["cggm_extra_saved_bf16"] <= cost.TARGETS["cggm_extra_saved_max"]
    assert 0 < targets["cggm_extra_flops"] <= cost.TARGETS["cggm_extra_flops_max"]
    step = document["step"]
    assert step["cggm"]["fp32"]["peak_bytes"] <= 1.05 * step["joint"]["fp32"]["peak_bytes"]


@pytest.mark.slow
def test_command_reports_every_count(document: dict) -> None:
    assert document["settings"]["roi"] == ROI and document["settings"]["batch"] == 2
    for name, variant in document["step"].items():
        assert variant["gflop"] > 0, name
        for precision in cost.PRECISIONS:
            counts = variant[precision]
            assert 0 < counts["saved_bytes"] <= counts["saved_total_bytes"], name
            assert counts["peak_bytes"] > counts["saved_bytes"] + counts["parameter_bytes"], name
            assert counts["gpu_memory_bytes"] == counts["peak_bytes"] + cost.CUDA_RESERVE
            assert counts["gradient_bytes"] == counts["parameter_bytes"] == counts["optimizer_state_bytes"]
        assert variant["bf16"]["saved_bytes"] < variant["fp32"]["saved_bytes"], name
    checkpointed, joint = document["step"][cost.CHECKPOINTED], document["step"]["joint"]
    assert checkpointed["fp32"]["saved_bytes"] < joint["fp32"]["saved_bytes"] / 2
    assert checkpointed["gflop"] > joint["gflop"]
    inference = document["inference"]
    # windows of 32^3 at overlap 0.5 start every 16 voxels: 3 x 3 x 2
    assert inference["volume"] == [64, 64, 48] and inference["windows"] == 18
    assert inference["gflop"] > 0 and inference["bf16"]["peak_bytes"] < inference["fp32"]["peak_bytes"]
    assert document["targets"]["saved_vs_segresnet_checkpoint_encoders_met"]


def test_bad_batch_names_the_setting(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["benchmark", "cost", "--batch", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err
