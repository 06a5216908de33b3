"""Two-process DDP on CPU (gloo): identical coefficients on every rank, and the same result as one process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Events
from toy_multimodal import accuracy, make_models, make_trainer, toy_data

from cggm_seg.modulation import CGGMHandler

ITERATIONS = 2


def _handler(heads, direction):
    return CGGMHandler(
        [f"encoders.{i}" for i in range(len(heads))],
        "output_layer",
        heads,
        torch.optim.SGD(heads.parameters(), lr=0.1),
        accuracy,
        rho=1.2,
        lam=0.3,
        direction=direction,
    )


def _train(net, heads, data, direction, batch):
    handler = _handler(heads, direction)
    history = []
    trainer = make_trainer(net, data, batch=batch, handlers=[handler])

    @trainer.on(Events.ITERATION_COMPLETED)
    def keep(engine):
        history.append(handler.coefficients.clone())

    trainer.run()
    return torch.stack(history)


def _rank_main(rank: int, world: int, init_file: str, out_dir: str, direction: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    net, heads = make_models()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    data = toy_data(n=8 * ITERATIONS)
    # rank r takes samples r, r+2, ... of each global batch of 8 -> same global batches as one process
    shard = [data[i] for i in range(len(data)) if i % world == rank]
    coefficients = _train(ddp, heads, shard, direction, batch=8 // world)
    torch.save(
        {"coefficients": coefficients, "net": net.state_dict(), "heads": heads.state_dict()},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort at exit otherwise)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["weights", "gradient"])
def test_two_rank_ddp_matches_ranks_and_single_process(tmp_path, direction):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), direction), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(ranks[0]["coefficients"], ranks[1]["coefficients"], rtol=0, atol=0)
    for key in ranks[0]["net"]:
        torch.testing.assert_close(ranks[0]["net"][key], ranks[1]["net"][key])
    for key in ranks[0]["heads"]:
        torch.testing.assert_close(ranks[0]["heads"][key], ranks[1]["heads"][key])

    net, heads = make_models()
    data = toy_data(n=8 * ITERATIONS)
    order = [i for b in range(ITERATIONS) for r in range(2) for i in range(8 * b + r, 8 * b + 8, 2)]
    single = _train(net, heads, [data[i] for i in order], direction, batch=8)
    torch.testing.assert_close(ranks[0]["coefficients"], single)
    if direction == "weights":  # L_gm depends only on weights: the two-rank run is the one-process run
        for key, value in net.state_dict().items():
            torch.testing.assert_close(ranks[0]["net"][key], value, msg=key)
