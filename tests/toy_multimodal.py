"""A tiny multimodal classifier and the SupervisedTrainer set-up shared by the handler tests."""

from __future__ import annotations

import torch
from monai.engines import SupervisedTrainer
from torch import nn

FEATURES, CLASSES, INPUT = 6, 3, 4


class ToyNet(nn.Module):
    """M linear encoders (one per modality slice of the input), concat fusion, linear output layer."""

    def __init__(self, modalities: int = 2) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            nn.Sequential(nn.Linear(INPUT, FEATURES), nn.Tanh()) for _ in range(modalities)
        )
        self.fusion = nn.Sequential(nn.Linear(FEATURES * modalities, FEATURES), nn.Tanh())
        self.output_layer = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [encoder(x[:, i]) for i, encoder in enumerate(self.encoders)]
        return self.output_layer(self.fusion(torch.cat(features, dim=1)))


class ToyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.Tanh())
        self.output_layer = nn.Linear(FEATURES, CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.hidden(features))


def toy_data(n: int = 8, modalities: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, modalities, INPUT, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return [{"image": x[i], "label": y[i]} for i in range(n)]


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.argmax(dim=1) == target).float().mean()


def make_models(modalities: int = 2, seed: int = 0) -> tuple[ToyNet, nn.ModuleList]:
    torch.manual_seed(seed)
    return ToyNet(modalities), nn.ModuleList(ToyHead() for _ in range(modalities))


def make_trainer(
    net: nn.Module,
    data: list[dict],
    epochs: int = 1,
    batch: int = 8,
    lr: float = 0.1,
    handlers: list | None = None,
    **kwargs,
) -> SupervisedTrainer:
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=nn.CrossEntropyLoss(),
        train_handlers=handlers or [],
        **kwargs,
    )


class GradSnapshot:
    """Copies every network gradient just before ``optimizer.step()`` (attach after CGGM)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def attach(self, engine: SupervisedTrainer) -> None:
        from monai.engines import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: SupervisedTrainer) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in engine.network.named_parameters()})


def cggm(heads: nn.ModuleList, metric=accuracy, **settings):
    """A CGGMHandler on ToyNet's encoders and output layer; ``lambda`` 0 unless given."""
    from cggm_seg.modulation import CGGMHandler

    settings.setdefault("lam", 0.0)
    return CGGMHandler(
        encoders=[f"encoders.{i}" for i in range(len(heads))],
        fusion_layer="output_layer",
        heads=heads,
        head_optimizer=torch.optim.SGD(heads.parameters(), lr=0.1),
        metric=metric,
        **settings,
    )
