"""``cggm-seg food101 extract``: frozen ViT/BERT token features for UPMC-Food-101, from local models.

For each record of ``DATA/{train,dev,test}.json`` the image goes through the ViT folder's
own image processor and model, the joined ``text_tokens`` through the BERT folder's
tokenizer (padded/truncated to ``--max-text-len`` tokens, 50 as in the CGGM code) and
model. The last hidden states are written in the layout of :mod:`cggm_seg.adapters.food101`,
text tokens zeroed after the attention mask. Models load with ``local_files_only=True``:
nothing is downloaded at run time. Needs the optional extra ``pip install 'cggm-seg[food101]'``.
Files are written under temporary names and renamed only when a split is complete.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cggm_seg.adapters.food101 import feature_paths, list_path, read_records
from cggm_seg.errors import UserError
from cggm_seg.io import atomic_path, check_new_outputs
from cggm_seg.networks.pretrained import from_local

DTYPES = {"float16": np.float16, "float32": np.float32}


class FrozenEncoders:
    """The ViT (with its image processor) and BERT (with its tokenizer), frozen, on ``device``."""

    def __init__(self, vit: Path, bert: Path, device: str, max_text_len: int) -> None:
        self.processor = from_local("AutoImageProcessor", vit, "--vit")
        self.vit = from_local("AutoModel", vit, "--vit").to(device).eval()
        self.tokenizer = from_local("AutoTokenizer", bert, "--bert")
        self.bert = from_local("AutoModel", bert, "--bert").to(device).eval()
        self.device = device
        self.max_text_len = max_text_len

    @torch.inference_mode()
    def __call__(self, images: list[Any], texts: list[str]) -> tuple[torch.Tensor, ...]:
        """Image tokens ``[B, T_img, D]``, text tokens ``[B, T_txt, D]`` (zero after the text), lengths."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        image_tokens = self.vit(pixel_values=pixels).last_hidden_state
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt"
        ).to(self.device)
        mask = encoded["attention_mask"]
        text_tokens = self.bert(**encoded).last_hidden_state * mask[..., None]
        return image_tokens.cpu(), text_tokens.cpu(), mask.sum(dim=1).cpu()


def open_image(data_dir: Path, record: dict[str, Any]) -> Any:
    """The record's image as RGB, or a one-line error naming the record and the file."""
    from PIL import Image, UnidentifiedImageError

    path = data_dir / record["img_path"]
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"record {record['id']!r}: cannot read image {path} ({err})") from err


def extract_split(
    data_dir: Path,
    split: str,
    encoders: FrozenEncoders,
    out_dir: Path,
    batch_size: int,
    dtype: type,
    force: bool,
) -> int:
    """Write the four feature files of ``split``; returns the number of records."""
    records = read_records(list_path(data_dir, split))
    paths = feature_paths(out_dir, split)
    check_new_outputs(paths.values(), force)
    with contextlib.ExitStack() as stack:
        temporary = {
            kind: stack.enter_context(atomic_path(path, overwrite=True)) for kind, path in paths.items()
        }
        arrays: dict[str, np.ndarray] = {}
        for start in tqdm(range(0, len(records), batch_size), desc=f"food101 {split}", disable=None):
            batch = records[start : start + batch_size]
            outputs = encoders(
                [open_image(data_dir, r) for r in batch], [" ".join(r["text_tokens"]) for r in batch]
            )
            for kind, values in zip(("image", "text", "text_lengths"), outputs, strict=True):
                if kind not in arrays:  # sizes are known once the models have run
                    arrays[kind] = np.lib.format.open_memmap(
                        temporary[kind],
                        mode="w+",
                        shape=(len(records), *values.shape[1:]),
                        dtype=np.int64 if kind == "text_lengths" else dtype,
                    )
                arrays[kind][start : start + len(batch)] = values.numpy()
        for array in arrays.values():
            array.flush()
        arrays.clear()  # close the memory maps before the files are renamed
        np.save(temporary["ids"], np.array([str(r["id"]) for r in records], dtype=str))
    return len(records)


def extract_features(
    data_dir: Path,
    vit: Path,
    bert: Path,
    out_dir: Path,
    splits: list[str],
    max_text_len: int,
    batch_size: int,
    device: str,
    dtype: str,
    force: bool = False,
) -> dict[str, int]:
    """Frozen ViT/BERT features of every record of ``splits``; records per split."""
    if max_text_len < 2 or batch_size < 1:
        raise UserError(
            f"--max-text-len must be >= 2 and --batch-size >= 1, got {max_text_len}, {batch_size}"
        )
    for split in splits:  # fail on an existing output before minutes of extraction
        check_new_outputs(feature_paths(out_dir, split).values(), force)
    encoders = FrozenEncoders(vit, bert, device, max_text_len)
    return {
        split: extract_split(data_dir, split, encoders, out_dir, batch_size, DTYPES[dtype], force)
        for split in splits
    }
