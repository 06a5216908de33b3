"""UPMC-Food-101 from its lists and images, preprocessed for encoders trained end to end.

The ``finetune`` counterpart of :mod:`cggm_seg.adapters.food101` (frozen features): each
record of ``DATA/{train,dev,test}.json`` (same lists, same validation, same split mapping
train -> train.json, valid -> dev.json, test -> test.json) gives

- ``"image"``: ``DATA/<img_path>`` opened with Pillow (RGB) and put through the ViT folder's
  own image processor: ``FloatTensor[3, H, W]``;
- ``"text"``: the joined ``text_tokens`` through the BERT folder's own tokenizer, with its
  special tokens, truncated to ``max_text_len`` tokens (50 in the authors' code):
  ``LongTensor[T_i]``, not padded;
- ``"label"``: the class index.

:func:`collate` stacks the images, pads the token ids to the batch's longest text and adds
``"lengths": {"text": [B]}``, which :func:`cggm_seg.adapters.sequence_core.prepare_sequence_batch`
hands to :class:`cggm_seg.networks.food101_finetune.Food101FinetuneNet` as the text's attention
mask (so the padding value never matters). Processor and tokenizer load from local folders
(:func:`cggm_seg.networks.pretrained.from_local`); preprocessing runs in the DataLoader
workers. The authors' train-time augmentation (flip, colour jitter, grey scale, blur) is not
applied: the processor's resize and normalisation are, for every split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from cggm_seg.adapters.food101 import CLASS_NAMES, list_path, read_records
from cggm_seg.adapters.food101_extract import open_image
from cggm_seg.adapters.sequence_core import LABEL_KEY, LENGTHS_KEY
from cggm_seg.errors import UserError
from cggm_seg.networks.pretrained import from_local

#: BERT tokens per text in the authors' code
MAX_TEXT_LEN = 50


class Food101ImageTextDataset(Dataset):
    """One split's records as preprocessed image and token ids (see the module docstring)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        processor: Any,
        tokenizer: Any,
        max_text_len: int = MAX_TEXT_LEN,
    ) -> None:
        if max_text_len < 2:
            raise UserError(f"max_text_len must be >= 2 (room for [CLS] and [SEP]), got {max_text_len}")
        self.data_dir = Path(data_dir)
        self.records = read_records(list_path(data_dir, split))
        # read_records checked every label: a class name or an index
        self.labels = np.array(
            [
                CLASS_NAMES.index(r["label"]) if isinstance(r["label"], str) else r["label"]
                for r in self.records
            ],
            dtype=np.int64,
        )
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image = open_image(self.data_dir, record)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        ids = self.tokenizer(" ".join(record["text_tokens"]), truncation=True, max_length=self.max_text_len)[
            "input_ids"
        ]
        return {
            "image": pixels,
            "text": torch.tensor(ids, dtype=torch.long),
            LABEL_KEY: torch.tensor(self.labels[index]),
        }


def collate(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Images stacked, token ids padded to the longest text (with 0, masked), ``lengths["text"]``."""
    texts = [sample["text"] for sample in batch]
    return {
        "image": torch.stack([sample["image"] for sample in batch]),
        "text": pad_sequence(texts, batch_first=True),
        LENGTHS_KEY: {"text": torch.tensor([len(t) for t in texts], dtype=torch.long)},
        LABEL_KEY: torch.stack([sample[LABEL_KEY] for sample in batch]),
    }


def load_food101_images(
    data_dir: str | os.PathLike,
    splits: Sequence[str],
    vit: str | os.PathLike,
    bert: str | os.PathLike,
    max_text_len: int = MAX_TEXT_LEN,
) -> dict[str, Food101ImageTextDataset]:
    """The requested splits, preprocessed by the image processor in ``vit`` and the tokenizer in ``bert``."""
    processor = from_local("AutoImageProcessor", vit, "vit_dir")
    tokenizer = from_local("AutoTokenizer", bert, "bert_dir")
    return {
        split: Food101ImageTextDataset(data_dir, split, processor, tokenizer, max_text_len)
        for split in splits
    }
