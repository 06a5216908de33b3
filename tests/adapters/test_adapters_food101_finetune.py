"""Food-101 with the ViT and BERT trained end to end (``encoders: finetune``): lists and images through the
models' own processor and tokenizer, and CGGM scaling the backbones' gradients, on tiny local models."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from monai.engines import SupervisedTrainer
from PIL import Image
from tiny_transformers import write_tiny_models
from torch import nn
from torch.utils.data import DataLoader
from toy_multimodal import GradSnapshot

from cggm_seg.adapters.food101 import CLASS_NAMES, NUM_CLASSES, read_records
from cggm_seg.adapters.food101_images import collate, load_food101_images
from cggm_seg.adapters.sequence_core import prepare_sequence_batch
from cggm_seg.cli import main as cli
from cggm_seg.errors import UserError
from cggm_seg.modulation import CGGMHandler
from cggm_seg.networks.food101_finetune import MODALITIES, Food101FinetuneNet, food101_network
from cggm_seg.networks.sequence import SequenceFusionNet, sequence_heads

transformers = pytest.importorskip("transformers")  # the food101 extra, in the dev extra: CI runs these
D_MODEL = 8


@pytest.fixture(scope="module")
def food(tmp_path_factory):
    root = tmp_path_factory.mktemp("food") / "food101"
    assert cli(["synth", "food101", "--out", str(root), "--n", "6", "--classes", "3", "--seed", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def models(food, tmp_path_factory):
    """A ViT (32x32 images, 16x16 patches) and a BERT with the lists' words as vocabulary, saved as
    ``save_pretrained`` folders with their image processor and tokenizer; no dropout, so runs repeat."""
    vit, bert = write_tiny_models(food, tmp_path_factory.mktemp("models"))
    return {"vit": vit, "bert": bert}


def _network(models) -> Food101FinetuneNet:
    torch.manual_seed(0)
    return Food101FinetuneNet(
        models["vit"], models["bert"], NUM_CLASSES, d_model=D_MODEL, num_heads=2, fusion_layers=1, dropout=0.0
    )


def test_lists_and_images_through_the_models_processor_and_tokenizer(food, models):
    data = load_food101_images(food, ["train", "valid"], models["vit"], models["bert"], max_text_len=6)
    train, records = data["train"], read_records(food / "train.json")
    assert len(train) == 6 and len(data["valid"]) == len(read_records(food / "dev.json"))  # valid is dev.json
    assert train.labels.tolist() == [CLASS_NAMES.index(r["label"]) for r in records]
    processor = transformers.AutoImageProcessor.from_pretrained(str(models["vit"]))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(models["bert"]))
    sample = train[0]
    with Image.open(food / records[0]["img_path"]) as image:
        expected = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(sample["image"], expected)
    ids = sample["text"].tolist()
    assert ids == tokenizer(" ".join(records[0]["text_tokens"]), truncation=True, max_length=6)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and len(ids) <= 6
    samples = [train[i] for i in range(3)]
    batch = collate(samples)
    lengths = [len(s["text"]) for s in samples]
    assert batch["image"].shape == (3, 3, 32, 32) and batch["text"].shape == (3, max(lengths))
    assert batch["lengths"]["text"].tolist() == lengths
    assert batch["label"].tolist() == train.labels[:3].tolist()
    inputs, _ = prepare_sequence_batch(batch, torch.device("cpu"))
    assert set(inputs) == {"image", "text", "lengths"}
    torch.testing.assert_close(pickle.loads(pickle.dumps(train))[1]["text"], train[1]["text"])  # for workers


def test_padding_is_masked(food, models):
    network = _network(models).eval()
    train = load_food101_images(food, ["train"], models["vit"], models["bert"])["train"]
    samples = sorted((train[i] for i in range(len(train))), key=lambda s: len(s["text"]))
    assert len(samples[0]["text"]) < len(samples[-1]["text"])
    with torch.no_grad():
        alone = network(prepare_sequence_batch(collate(samples[:1]))[0])
        padded = network(prepare_sequence_batch(collate([samples[0], samples[-1]]))[0])
    torch.testing.assert_close(padded[:1], alone)


def _scripted(values):
    """A utilisation metric returning ``values`` in turn: coefficients known by hand."""
    it = iter(values)
    return lambda prediction, target: torch.tensor(next(it))


def test_cggm_scales_the_gradients_of_the_vit_and_bert(food, models):
    data = load_food101_images(food, ["train"], models["vit"], models["bert"], max_text_len=8)["train"]
    network = _network(models)

    def one_epoch(modulate: bool):
        net, snap = copy.deepcopy(network), GradSnapshot()
        heads = sequence_heads(len(MODALITIES), D_MODEL, NUM_CLASSES)
        handler = CGGMHandler(
            encoders=net.encoder_names(),
            fusion_layer="output_layer",
            heads=heads,
            head_optimizer=torch.optim.SGD(heads.parameters(), lr=0.1),
            metric=_scripted([0.6, 0.2, 0.7, 0.5]),
            rho=1.3,
            lam=0.0,
        )
        SupervisedTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            network=net,
            train_data_loader=DataLoader(data, batch_size=3, collate_fn=collate),
            optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
            loss_function=nn.CrossEntropyLoss(),
            prepare_batch=prepare_sequence_batch,
            decollate=False,
            train_handlers=[handler, snap] if modulate else [snap],
        ).run()
        return snap.grads, handler

    plain, _ = one_epoch(modulate=False)
    modulated, handler = one_epoch(modulate=True)
    assert len(plain) == len(modulated) == 2  # one epoch, two iterations
    coefficients = {"image": 0.2 / 0.8, "text": 0.6 / 0.8}  # first iteration: d = (0.6, 0.2), B = (S - d) / S
    scaled = set()
    for name, grad in plain[0].items():
        if name.startswith("encoders."):
            modality = name.split(".")[1]
            torch.testing.assert_close(modulated[0][name], 1.3 * coefficients[modality] * grad)
            if ".backbone." in name and grad.abs().sum() > 0:
                scaled.add(modality)
        else:  # fusion and output layer: never scaled
            torch.testing.assert_close(modulated[0][name], grad)
    assert scaled == set(MODALITIES)  # the ViT's and BERT's own weights had gradients, and were scaled
    torch.testing.assert_close(handler.coefficients, torch.tensor([0.3 / 0.4, 0.1 / 0.4]))  # d = (0.1, 0.3)


def test_settings_errors_name_the_setting(food, models, tmp_path):
    with pytest.raises(UserError, match=r"vit_dir .*missing: not a folder"):
        load_food101_images(food, ["test"], tmp_path / "missing", models["bert"])
    with pytest.raises(UserError, match=r"vit_dir .*bert: cannot load it from the local folder"):
        load_food101_images(food, ["test"], models["bert"], models["bert"])
    with pytest.raises(UserError, match="max_text_len must be >= 2"):
        load_food101_images(food, ["test"], models["vit"], models["bert"], max_text_len=1)
    with pytest.raises(UserError, match="encoders: 'finetuned' is not one of frozen_features, finetune"):
        food101_network("finetuned", None, NUM_CLASSES)
    frozen = food101_network(
        "frozen_features",
        {"image": 16, "text": 16},
        NUM_CLASSES,
        d_model=D_MODEL,
        num_heads=2,
        encoder_layers=1,
        fusion_layers=1,
    )
    assert isinstance(frozen, SequenceFusionNet)
    finetune = food101_network(
        "finetune",
        None,
        NUM_CLASSES,
        d_model=D_MODEL,
        num_heads=2,
        fusion_layers=1,
        vit=models["vit"],
        bert=models["bert"],
    )
    assert finetune.encoder_names() == ["encoders.image", "encoders.text"]
    groups = finetune.parameter_groups(1e-5)
    assert groups[0]["lr"] == 1e-5 and "lr" not in groups[1]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in finetune.parameters())
