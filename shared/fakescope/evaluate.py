"""``fakescope evaluate``: metrics on labelled data, clean and under perturbations.

The robustness table re-measures every metric after JPEG re-compression (quality 75), additive
Gaussian noise, down-then-up scaling (half size, bicubic both ways), and FGSM (Goodfellow et al.,
2015) at eps 2/255 and 4/255 computed against the model itself with the true labels: the last is a
white-box worst case, not a threat model for a black-box service.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from fakescope.calibration import fit_temperature
from fakescope.checkpoint import CONFIG_FILE
from fakescope.data import LabelledArray, load_labelled, make_split
from fakescope.detector import Detector
from fakescope.metrics import binary_metrics

__all__ = [
    "PERTURBATIONS",
    "evaluate_arrays",
    "fgsm_images",
    "format_table",
    "load_eval_data",
    "recalibrate",
    "robustness",
]

NOISE_SIGMA = 0.02  # in [0, 1] pixel units, about 5/255


def _jpeg(images: np.ndarray, quality: int = 75) -> np.ndarray:
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _noise(images: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float32) / 255.0 + rng.normal(0.0, NOISE_SIGMA, images.shape).astype(np.float32)
    return (np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rescale(images: np.ndarray, factor: float = 0.5) -> np.ndarray:
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    for i, im in enumerate(images):
        pil = Image.fromarray(im).resize(small, Image.Resampling.BICUBIC)
        out[i] = np.asarray(pil.resize((w, h), Image.Resampling.BICUBIC))
    return out


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q75": _jpeg,
    f"gaussian_noise_sigma{NOISE_SIGMA}": _noise,
    "down_up_0.5x": _rescale,
}
FGSM_EPS = (2 / 255, 4 / 255)


def fgsm_images(detector: Detector, images: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """``images`` after a one-step signed-gradient attack of ``eps`` (in [0, 1] pixel units).

    The result is quantised back to 8 bits: an attack that only survives in float is not an image.
    """
    mean, std = detector._mean, detector._std
    x = torch.from_numpy(images).to(detector.device).permute(0, 3, 1, 2).float().div(255.0)
    x.requires_grad_(True)
    loss = F.cross_entropy(detector.model((x - mean) / std), torch.from_numpy(labels).to(detector.device))
    (grad,) = torch.autograd.grad(loss, x)
    adv = (x + eps * grad.sign()).clamp(0.0, 1.0).detach()
    return (adv * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _probs(detector: Detector, images: np.ndarray, batch_size: int, desc: str | None) -> np.ndarray:
    parts = [
        detector.predict(images[i : i + batch_size])
        for i in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=desc is None)
    ]
    return np.concatenate(parts) if parts else np.empty(0)


def evaluate_arrays(detector: Detector, data: LabelledArray, batch_size: int = 256) -> dict[str, Any]:
    """Clean metrics of ``detector`` on ``data``."""
    return binary_metrics(data.labels, _probs(detector, data.images, batch_size, "evaluate"))


def robustness(detector: Detector, data: LabelledArray, batch_size: int = 256) -> dict[str, dict[str, Any]]:
    """Metrics under each perturbation of :data:`PERTURBATIONS` and FGSM, keyed by perturbation."""
    table: dict[str, dict[str, Any]] = {"clean": evaluate_arrays(detector, data, batch_size)}
    for name, fn in PERTURBATIONS.items():
        probs = [
            detector.predict(fn(data.images[i : i + batch_size]))
            for i in tqdm(range(0, len(data), batch_size), desc=name, leave=False)
        ]
        table[name] = binary_metrics(data.labels, np.concatenate(probs))
    for eps in FGSM_EPS:
        name = f"fgsm_eps{round(eps * 255)}/255"
        probs = [
            detector.predict(
                fgsm_images(detector, data.images[i : i + batch_size], data.labels[i : i + batch_size], eps)
            )
            for i in tqdm(range(0, len(data), batch_size), desc=name, leave=False)
        ]
        table[name] = binary_metrics(data.labels, np.concatenate(probs))
    return table


def load_eval_data(
    sources: Sequence[str | Path], detector: Detector, split: str | None = None, limit: int | None = None
) -> LabelledArray:
    """Labelled images at the detector's input size.

    Args:
        sources: CIFAKE-layout folders or archives.
        detector: decides the input size.
        split: ``"val"`` or ``"calib"`` to keep only that held-out part of the checkpoint's own
            training split (same sources, seed and sizes as the checkpoint records); ``None`` for all.
        limit: keep a stratified-by-order prefix of at most this many images (quick runs).
    """
    data = load_labelled(sources, size=detector.input_size)
    if split is not None:
        rec = detector.meta.training.get("config", {})
        spl = make_split(data.names, data.labels, rec["val_size"], rec["calib_size"], rec["seed"])
        expected = detector.meta.training["split"]["val_fingerprint"]
        if spl.fingerprint(data.names) != expected:
            raise ValueError(
                "these sources do not reproduce the checkpoint's validation split "
                f"(fingerprint {spl.fingerprint(data.names)} != {expected}); pass the sources it was trained on"
            )
        data = data.subset({"val": spl.val, "calib": spl.calib}[split])
    if limit is not None and limit < len(data):
        rng = np.random.default_rng(0)
        data = data.subset(np.sort(rng.permutation(len(data))[:limit]))
    return data


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table of the metrics, one row per condition."""
    cols = ("accuracy", "precision", "recall", "f1", "roc_auc", "ece")
    lines = [f"{'condition':<26}" + "".join(f"{c:>11}" for c in cols) + f"{'n':>8}"]
    for name, m in table.items():
        lines.append(f"{name:<26}" + "".join(f"{m[c]:>11.4f}" for c in cols) + f"{m['n']:>8}")
    return "\n".join(lines)


def recalibrate(
    checkpoint: str | Path, sources: Sequence[str | Path], *, tta_hflip: bool, batch_size: int = 256
) -> dict[str, Any]:
    """Refits the temperature on the checkpoint's calibration split, with or without flip TTA.

    Rewrites ``config.json`` (the weights are untouched) with the new temperature, the TTA setting,
    and the validation metrics measured with them, and returns the calibration-split accuracy of
    both choices so the decision can be made on data the reported metrics never saw.
    """
    checkpoint = Path(checkpoint)
    detector = Detector.load(checkpoint, device="auto")
    calib = load_eval_data(sources, detector, split="calib")
    calib_acc = {}
    for tta in (False, True):
        detector.meta.tta_hflip = tta
        logits = torch.cat(
            [detector.logits(calib.images[i : i + batch_size]) for i in range(0, len(calib), batch_size)]
        )
        calib_acc[tta] = float((logits.argmax(1).numpy() == calib.labels).mean())
        if tta == tta_hflip:
            temperature = fit_temperature(logits, torch.from_numpy(calib.labels))
    detector.meta.tta_hflip = tta_hflip
    detector.meta.temperature = temperature
    val = load_eval_data(sources, detector, split="val")
    detector.meta.metrics = {"validation": evaluate_arrays(detector, val, batch_size), "temperature": temperature}
    (checkpoint / CONFIG_FILE).write_text(json.dumps(detector.meta.to_dict(), indent=2) + "\n")
    return {"calib_accuracy": {"plain": calib_acc[False], "hflip_tta": calib_acc[True]}, **detector.meta.metrics}
