"""CRNN trained on rendered text with exact labels: the catalogue's Keras CRNN (``models.crnn``), trained inside
the suite with CTC loss and scored by the exact-match accuracy of greedy CTC decoding against the strings.

Data: no download. Random strings (seeded) of the model's 36 symbols, lowercase letters and digits (3 to 8 of
them at full size, 3 or 4 digits at tiny size), rendered with Pillow in the DejaVu fonts that ship in
matplotlib's wheel (``mpl-data/fonts/ttf``: DejaVuSans.ttf, DejaVuSans-Bold.ttf, DejaVuSansMono.ttf,
DejaVuSerif.ttf), with seeded variation: font and size, grey levels of ink and paper, position, and Gaussian
noise. A string wider than the image is squeezed horizontally to fit. Strings are unique across both splits,
so no evaluation string is ever seen in training. Labels are class ids (0-9 digits, 10-35 letters, as the
model's 37 classes; the CTC blank is 36), one row per sample padded with -1.

Full size is narrower than the paper's (channels 32-64-128-128-256-256-256 instead of 64-...-512, BiLSTMs of
128 instead of 256 units) so that it trains in minutes on two CPU cores; the width (100, 26 frames) and
the layer structure are the paper's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models import ModelSpec
from models.crnn import BLANK, HEIGHT, build, frames, inputs
from models.trained import Splits, TrainedTrack

# Class k is SYMBOLS[k]; the blank (36) is none of them.
SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf")
DATA_SEED = 2015


def font_paths() -> dict[str, Path]:
    """The DejaVu font files of the installed matplotlib (file name -> path); FileNotFoundError if one is
    missing (matplotlib always ships them in ``mpl-data/fonts/ttf``)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = {name: folder / name for name in FONTS}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib {matplotlib.__version__} lacks the fonts {missing} in {folder}")
    return paths


def draw_strings(cfg: Mapping[str, Any], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct random strings of ``cfg["symbols"]`` leading symbols, lengths uniform in
    ``cfg["lengths"]`` (inclusive)."""
    alphabet = SYMBOLS[: cfg["symbols"]]
    low, high = cfg["lengths"]
    seen: set[str] = set()
    drawn: list[str] = []
    while len(drawn) < count:
        text = "".join(rng.choice(list(alphabet), size=int(rng.integers(low, high + 1))))
        if text not in seen:
            seen.add(text)
            drawn.append(text)
    return drawn


def render(text: str, cfg: Mapping[str, Any], fonts: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """One (32, width) uint8 image of ``text``: dark ink on light paper (grey levels drawn), a random font of
    ``fonts`` (file name -> loaded ImageFont per size) at a random size of ``cfg["font_sizes"]``, placed at a
    random position, squeezed horizontally if too wide, with Gaussian noise."""
    from PIL import Image, ImageDraw

    width = cfg["width"]
    low, high = cfg["font_sizes"]
    font = fonts[FONTS[int(rng.integers(len(FONTS)))]][int(rng.integers(low, high + 1))]
    left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    # The line box (ascent + descent) rather than the ink's box, so the baseline does not jump with the letters.
    mask = Image.new("L", (max(right - left, 1), ascent + descent), 0)
    ImageDraw.Draw(mask).text((-left, 0), text, fill=255, font=font)
    fit = (min(mask.width, width - 2), min(mask.height, HEIGHT))
    if fit != mask.size:
        mask = mask.resize(fit, Image.Resampling.BILINEAR)
    x = int(rng.integers(0, width - mask.width + 1))
    y = int(rng.integers(0, HEIGHT - mask.height + 1))
    ink = np.zeros((HEIGHT, width), dtype=np.float32)
    ink[y : y + mask.height, x : x + mask.width] = np.asarray(mask, dtype=np.float32) / 255.0
    paper, dark = float(rng.uniform(170, 255)), float(rng.uniform(0, 90))
    image = paper + (dark - paper) * ink + rng.normal(0.0, rng.uniform(0, cfg["noise"]), size=ink.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode(strings: list[str], length: int) -> np.ndarray:
    """Class ids of ``strings``, one row each, padded with -1 to ``length`` columns."""
    labels = np.full((len(strings), length), -1, dtype=np.int64)
    for row, text in enumerate(strings):
        labels[row, : len(text)] = [SYMBOLS.index(c) for c in text]
    return labels


def prepare(cfg: Mapping[str, Any], files: Mapping[str, Path]) -> Splits:
    """Rendered images (batch, 1, 32, width) in [-1, 1) and their strings' class ids padded with -1, as a
    training and an evaluation split of distinct strings (seeded; ``files`` is unused: the fonts are
    matplotlib's)."""
    from PIL import ImageFont

    if cfg["lengths"][1] > frames(cfg["width"]) // 2:
        # CTC needs a frame per symbol and a blank between repeats; half the frames keeps that with room.
        raise ValueError(f"strings of {cfg['lengths'][1]} symbols are too long for {frames(cfg['width'])} frames")
    low, high = cfg["font_sizes"]
    fonts = {
        name: {size: ImageFont.truetype(str(path), size) for size in range(low, high + 1)}
        for name, path in font_paths().items()
    }
    rng = np.random.default_rng(DATA_SEED)
    total = cfg["train_samples"] + cfg["eval_samples"]
    strings = draw_strings(cfg, total, rng)
    images = np.stack([render(s, cfg, fonts, rng) for s in strings])
    # Pixels p in 0..255 to p / 128 - 1, in [-1, 1) as the input spec says.
    images = (images.astype(np.float32) / 128.0 - 1.0)[:, None]
    labels = encode(strings, cfg["lengths"][1])
    cut = cfg["train_samples"]
    return Splits(
        train={"images": images[:cut]},
        train_labels=labels[:cut],
        eval={"images": images[cut:]},
        eval_labels=labels[cut:],
    )


def ctc_loss(labels: Any, logits: Any) -> Any:
    """Mean CTC loss of per-frame ``logits`` (batch, frames, 37) against class ids padded with -1."""
    import tensorflow as tf

    labels = tf.cast(labels, tf.int32)
    lengths = tf.reduce_sum(tf.cast(labels >= 0, tf.int32), axis=1)
    frame_count = tf.fill([tf.shape(logits)[0]], tf.shape(logits)[1])
    loss = tf.nn.ctc_loss(
        tf.maximum(labels, 0),
        logits,
        label_length=lengths,
        logit_length=frame_count,
        logits_time_major=False,
        blank_index=BLANK,
    )
    return tf.reduce_mean(loss)


def train(cfg: Mapping[str, Any], splits: Splits, seed: int, out: Path) -> None:
    """Fit the catalogue's CRNN with CTC loss (Adam, gradients clipped, seeded shuffling) on the training
    split, one progress line per epoch on stderr, and write its weights to ``out`` (``.weights.h5``)."""
    from models._keras_training import fit_and_save

    fit_and_save(
        build(cfg, seed),
        splits.train,
        splits.train_labels,
        out,
        epochs=cfg["epochs"],
        batch=cfg["batch"],
        seed=seed,
        learning_rate=cfg["learning_rate"],
        loss=ctc_loss,
        clipnorm=5.0,
    )


def edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Levenshtein distance between two sequences (insertions, deletions and substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def score(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Exact-match accuracy of greedy CTC decoding of ``outputs["logits"]`` (batch, frames, 37) against the
    labels of the samples given (class ids padded with -1), primary; and ``cer``, the character error rate
    (edit distances over the labels' total length; lower is better, 0 is perfect)."""
    from analysis.accuracy import ctc_greedy_decode

    decoded = ctc_greedy_decode(outputs["logits"], BLANK)
    truth = [tuple(int(c) for c in row if c >= 0) for row in labels[: len(decoded)]]
    errors = sum(edit_distance(d, t) for d, t in zip(decoded, truth, strict=True))
    return {
        "exact_match": float(np.mean([d == t for d, t in zip(decoded, truth, strict=True)])),
        "cer": errors / sum(len(t) for t in truth),
    }


SPECS = [
    ModelSpec(
        name="crnn_words",
        category="text",
        framework="tensorflow",
        task="ctc_text",
        paper_model=None,
        paper_batch=256,
        summary="CRNN trained on rendered random strings (DejaVu fonts), exact match of greedy CTC decoding",
        configs={
            "full": {
                "width": 100,
                "channels": (32, 64, 128, 128, 256, 256, 256),
                "hidden": 128,
                "lstm_layers": 2,
                "symbols": 36,
                "lengths": (3, 8),
                "font_sizes": (18, 24),
                "noise": 12.0,
                "train_samples": 6000,
                "eval_samples": 1000,
                "epochs": 8,
                "batch": 32,
                "learning_rate": 1e-3,
            },
            "tiny": {
                "width": 48,
                "channels": (16, 32, 64, 64, 128, 128, 128),
                "hidden": 32,
                "lstm_layers": 2,
                "symbols": 10,
                "lengths": (3, 4),
                "font_sizes": (16, 20),
                "noise": 8.0,
                "train_samples": 2000,
                "eval_samples": 256,
                # CTC sits on a plateau (every frame blank) for the first epochs; these leave it by epoch 6.
                "epochs": 12,
                "batch": 32,
                "learning_rate": 1e-3,
            },
        },
        inputs=inputs,
        outputs=("logits",),
        build=build,
        task_options={"blank": BLANK},
        variant_of="crnn",
        trained=TrainedTrack(
            assets=(),
            prepare=prepare,
            train=train,
            score=score,
            metric="exact_match",
            chance=0.0,
            margin=0.5,
            weights_suffix=".weights.h5",
            packages={"matplotlib": "the DejaVu fonts", "pillow": "the text rasteriser"},
            data_note=(
                "random strings of digits and lowercase letters rendered in matplotlib's DejaVu fonts (exact "
                "labels, no download), distinct strings in the training and evaluation splits"
            ),
        ),
    )
]
