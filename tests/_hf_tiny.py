"""Tiny Hugging Face image classifiers (a few thousand parameters) saved to local directories with their
image processors, for the adapter tests: nothing is downloaded (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as tf  # noqa: E402

FAMILIES = ("resnet", "convnext", "vit", "bit")


def save_tiny(family: str, directory: Path, num_labels: int = 10, size: int = 16, seed: int = 0,
              labels: list[str] | None = None) -> Path:
    """A tiny ``family`` classifier for ``num_labels`` classes and its processor (inputs ``size`` px) in ``directory``;
    ``labels``: its classes' names (id2label; default LABEL_i)."""
    torch.manual_seed(seed)
    if family == "resnet":  # microsoft/resnet-*: ConvNeXt's processor (shortest edge / crop_pct, then crop)
        net = tf.ResNetForImageClassification(tf.ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
            num_labels=num_labels))
        processor = tf.ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=0.875)
    elif family == "convnext":
        net = tf.ConvNextForImageClassification(tf.ConvNextConfig(
            num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], patch_size=2, num_labels=num_labels))
        processor = tf.ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=0.875, image_mean=[0.485, 0.456, 0.406],
                                              image_std=[0.229, 0.224, 0.225])
    elif family == "vit":  # resize to (height, width), bilinear
        net = tf.ViTForImageClassification(tf.ViTConfig(
            image_size=size, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=num_labels))
        processor = tf.ViTImageProcessor(size={"height": size, "width": size})
    elif family == "bit":  # shortest edge, then a center crop (BiT's and CLIP's processors)
        net = tf.BitForImageClassification(tf.BitConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="preactivation", num_groups=4,
            num_labels=num_labels, global_padding="SAME"))
        processor = tf.BitImageProcessor(size={"shortest_edge": size + 2}, crop_size={"height": size, "width": size},
                                         do_center_crop=True)
    else:
        raise ValueError(family)
    if labels is not None:
        net.config.id2label = dict(enumerate(labels))
        net.config.label2id = {name: i for i, name in enumerate(labels)}
    net.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
