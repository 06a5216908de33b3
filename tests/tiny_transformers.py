"""Tiny random ViT and BERT saved as local ``save_pretrained`` folders: the Food-101 tests' models.

No hub access: the tokenizer's vocabulary is the synthetic lists' words, the image processor works
at 32x32 with 16x16 patches; no dropout, so two runs of the same model agree.
"""

from __future__ import annotations

from pathlib import Path

from cggm_seg.adapters.food101 import read_records

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_models(food: Path, root: Path) -> tuple[Path, Path]:
    """(ViT folder, BERT folder) under ``root`` for the lists in ``food``."""
    import transformers  # the food101 extra; part of the dev extra, so CI runs these tests

    vit, bert = root / "vit", root / "bert"
    transformers.ViTModel(
        transformers.ViTConfig(
            image_size=32,
            patch_size=16,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).save_pretrained(vit)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    words = sorted(
        {
            w
            for name in ("train", "dev", "test")
            for r in read_records(food / f"{name}.json")
            for w in r["text_tokens"]
        }
    )
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL, *words]) + "\n")
    transformers.BertTokenizer(vocab_file=str(vocab)).save_pretrained(bert)
    transformers.BertModel(
        transformers.BertConfig(
            vocab_size=len(SPECIAL) + len(words),
            hidden_size=12,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).save_pretrained(bert)
    return vit, bert
