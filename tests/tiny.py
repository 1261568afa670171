"""Tiny configs and inputs shared by the per-framework test modules: every model builds and
compiles in seconds, and every code path (dropout, BERT heads and padding, two ResNet stages) runs."""

from __future__ import annotations

import numpy as np

from dlzoo.zoo.configs import BertConfig, GPTConfig, ResNetConfig, ViTConfig

LENGTH, SIZE = 8, 16


def configs(num_layers: int = 1, vit_dropout: float = 0.1) -> dict:
    return {
        "gpt": GPTConfig(
            vocab_size=64,
            context_length=16,
            hidden_size=32,
            num_layers=num_layers,
            num_heads=4,
            mlp_dim=64,
            dropout=0.1,
            attention_dropout=0.1,
        ),
        "bert": BertConfig(
            vocab_size=64, max_positions=16, hidden_size=32, num_layers=num_layers, num_heads=4, mlp_dim=64, mlm_head=True, num_classes=3
        ),
        "vit": ViTConfig(
            image_size=16, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, mlp_dim=64, num_classes=5, dropout=vit_dropout
        ),
        "resnet": ResNetConfig(depths=(1, 1), widths=(4, 8), stem_width=8, num_classes=5),
    }


def inputs(arch: str, config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids (BERT: the second row padded from position 5, two segments) or NHWC images."""
    rng = np.random.default_rng(seed)
    if arch in ("gpt", "bert"):
        out = {"input_ids": rng.integers(0, config.vocab_size, (batch, LENGTH)).astype(np.int32)}
        if arch == "bert":
            mask = np.ones((batch, LENGTH), np.int32)
            mask[1, 5:] = 0
            out["attention_mask"] = mask
            out["token_type_ids"] = (np.arange(LENGTH) >= 4).astype(np.int32)[None].repeat(batch, 0)
        return out
    size = config.image_size if arch == "vit" else SIZE
    return {"pixel_values": rng.standard_normal((batch, size, size, 3)).astype(np.float32)}


def output_shapes(batch: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """What each tiny model returns for ``inputs(arch, config, batch)``."""
    return {
        "gpt": {"logits": (batch, LENGTH, 64)},
        "bert": {
            "last_hidden_state": (batch, LENGTH, 32),
            "pooler_output": (batch, 32),
            "mlm_logits": (batch, LENGTH, 64),
            "logits": (batch, 3),
        },
        "vit": {"logits": (batch, 5)},
        "resnet": {"logits": (batch, 5)},
    }
