"""``fakescope evaluate``: metrics on labelled data, clean and under perturbations.

The robustness table re-measures every metric after JPEG re-compression (quality 75), additive
Gaussian noise, down-then-up scaling (half and three-quarter size, bicubic both ways), Gaussian
blur (sigma 1 pixel), a 4-pixel crop-and-pad, and FGSM (Goodfellow et al.,
2015) at eps 2/255 and 4/255 computed against the model itself with the true labels: the last is a
white-box worst case, not a threat model for a black-box service.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from tqdm import tqdm

from fakescope.checkpoint import CONFIG_FILE
from fakescope.data import LabelledArray, iter_labelled, load_labelled, make_split
from fakescope.detector import Detector, load_detector
from fakescope.domain import fit_domain
from fakescope.imageio import InputItem
from fakescope.metrics import binary_metrics, domain_metrics
from fakescope.pipeline import classify_items
from fakescope.temperature import fit_temperature

__all__ = [
    "PERTURBATIONS",
    "domain_report",
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


def _blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    out = np.empty_like(images)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(radius=sigma)))
    return out


def _crop_pad(images: np.ndarray, pixels: int = 4) -> np.ndarray:
    """Crops ``pixels`` rows and columns off the top and left and pads the bottom and right with
    black back to size: the image shifted by ``pixels`` both ways, as a careless re-frame does."""
    out = np.zeros_like(images)
    out[:, : images.shape[1] - pixels, : images.shape[2] - pixels] = images[:, pixels:, pixels:]
    return out


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q75": _jpeg,
    f"gaussian_noise_sigma{NOISE_SIGMA}": _noise,
    "down_up_0.5x": _rescale,
    "down_up_0.75x": lambda images: _rescale(images, 0.75),
    "gaussian_blur_sigma1": _blur,
    "crop_pad_4px": _crop_pad,
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
            training split (same sources, seed and sizes as the checkpoint records), ``"train"`` for
            the part it was trained on (with the sources it trained on outside the split); ``None``
            for all.
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
        data = data.subset({"val": spl.val, "calib": spl.calib, "train": spl.train}[split])
        train_only = rec.get("train_only") or []
        if split == "train" and train_only:
            # Sources the run trained on in full, outside the split (``fakescope train --train-only``).
            more = load_labelled(train_only, size=detector.input_size)
            data = LabelledArray(
                np.concatenate([data.images, more.images]),
                np.concatenate([data.labels, more.labels]),
                data.names + more.names,
            )
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
    checkpoint: str | Path,
    sources: Sequence[str | Path],
    *,
    tta_hflip: bool | None,
    batch_size: int = 256,
    domain_fit_images: int = 20_000,
    in_domain_share: float = 0.95,
) -> dict[str, Any]:
    """Refits the temperature and the domain model on held-out data, and decides on flip TTA.

    The temperature is fitted on the checkpoint's calibration split. ``tta_hflip=None`` decides TTA
    there too (on only where it is more accurate). The domain model (fakescope.domain) is fitted on
    ``domain_fit_images`` of the training images, its threshold set so that ``in_domain_share`` of
    the calibration split is in domain. Rewrites ``config.json`` and ``domain.safetensors`` (the
    weights are untouched), with the validation metrics measured with them, and returns the
    calibration-split accuracy of both TTA choices, so every decision rests on data the reported
    metrics never saw.
    """
    checkpoint = Path(checkpoint)
    detector = Detector.load(checkpoint, device="auto")
    detector.domain = None
    calib = load_eval_data(sources, detector, split="calib")
    calib_acc: dict[bool, float] = {}
    calib_logits: dict[bool, torch.Tensor] = {}
    for tta in (False, True):
        detector.meta.tta_hflip = tta
        calib_logits[tta] = torch.cat(
            [detector.logits(calib.images[i : i + batch_size]) for i in range(0, len(calib), batch_size)]
        )
        calib_acc[tta] = float((calib_logits[tta].argmax(1).numpy() == calib.labels).mean())
    if tta_hflip is None:
        tta_hflip = calib_acc[True] > calib_acc[False]
    temperature = fit_temperature(calib_logits[tta_hflip], torch.from_numpy(calib.labels))
    detector.meta.tta_hflip = tta_hflip
    detector.meta.temperature = temperature

    train = load_eval_data(sources, detector, split="train")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(len(train))[: min(domain_fit_images, len(train))])
    feats = _features(detector, train.images[pick], batch_size)
    domain = fit_domain(feats, torch.from_numpy(train.labels[pick]))
    domain = domain.with_threshold(_features(detector, calib.images, batch_size), in_domain_share)
    detector.meta.domain = domain.save(checkpoint)
    detector.domain = domain

    val = load_eval_data(sources, detector, split="val")
    detector.meta.metrics = {
        "validation": evaluate_arrays(detector, val, batch_size),
        "temperature": temperature,
        "validation_in_domain_share": float((_domain_scores(detector, val.images, batch_size) <= 1.0).mean()),
    }
    (checkpoint / CONFIG_FILE).write_text(json.dumps(detector.meta.to_dict(), indent=2) + "\n")
    return {
        "calib_accuracy": {"plain": calib_acc[False], "hflip_tta": calib_acc[True]},
        "tta_hflip": tta_hflip,
        **detector.meta.metrics,
    }


def domain_report(detector: Detector, data: LabelledArray, batch_size: int = 256) -> dict[str, Any]:
    """:func:`fakescope.metrics.domain_metrics` of ``data`` (at the input size: features only)."""
    probs = _probs(detector, data.images, batch_size, None)
    return domain_metrics(data.labels, probs, _domain_scores(detector, data.images, batch_size) <= 1.0)


def _features(detector: Detector, images: np.ndarray, batch_size: int) -> torch.Tensor:
    return torch.cat([detector.pooled_features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _domain_scores(detector: Detector, images: np.ndarray, batch_size: int) -> np.ndarray:
    assert detector.domain is not None
    return detector.domain.scores(_features(detector, images, batch_size)).cpu().numpy()


def _threshold_at(values: np.ndarray, share: float, above: bool) -> float:
    """The smallest threshold t with at most ``share`` of ``values`` at or above t (``above``), or the
    largest with at most ``share`` of them below t (not ``above``)."""
    v = np.sort(values)
    allowed = int(np.floor(share * len(v) + 1e-9))
    if above:
        # Everything above the (n - allowed)-th smallest may be called fake; t sits just above it.
        return 0.0 if allowed >= len(v) else float(np.nextafter(v[len(v) - allowed - 1], np.inf))
    return 1.0 if allowed >= len(v) else float(v[allowed])


def operating_points(
    checkpoint: str | Path | None, sources: Sequence[str | Path], target_fpr: float, target_fnr: float | None = None
) -> dict[str, Any]:
    """The thresholds a platform's own labelled images call for, scored as the service scores them.

    Every image of ``sources`` (``REAL/`` and ``FAKE/`` folders or archives, such as ``fakescope
    feedback export``'s) goes through the scan's pipeline (routing, decoding, calibrated
    probability). ``fake_threshold`` is the lowest at which at most ``target_fpr`` of the real images
    would be called fake; ``real_threshold`` the highest below which at most ``target_fnr`` (default:
    the same share) of the fakes would be called real. Between the two the verdict is uncertain.
    Nothing is written: the thresholds are the caller's (a tenant default, a job's override).
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    target_fnr = target_fpr if target_fnr is None else target_fnr
    detector = load_detector(checkpoint)
    names, labels, blobs = [], [], []
    for src in sources:
        for name, label, data in iter_labelled(src):
            names.append(name)
            labels.append(label)
            blobs.append(data)
    items = [InputItem(n, functools.partial(bytes, b), len(b)) for n, b in zip(names, blobs, strict=True)]
    results = list(classify_items(detector, items, overlays=False))
    ok = [i for i, r in enumerate(results) if r.ok]
    probs = np.asarray([results[i].fake_probability for i in ok], dtype=float)
    y = np.asarray([labels[i] for i in ok])
    real, fake = probs[y == 0], probs[y == 1]
    if not len(real) or not len(fake):
        raise ValueError(f"need both real and fake images: {len(real)} real, {len(fake)} fake could be scored")
    fake_t = _threshold_at(real, target_fpr, above=True)
    real_t = min(_threshold_at(fake, target_fnr, above=False), fake_t)
    return {
        "model_version": detector.model_version,
        "n_real": len(real),
        "n_fake": len(fake),
        "errors": len(results) - len(ok),
        "target_fpr": target_fpr,
        "target_fnr": target_fnr,
        "fake_threshold": fake_t,
        "real_threshold": real_t,
        "at_these_thresholds": {
            "false_positive_rate": float((real >= fake_t).mean()),
            "false_negative_rate": float((fake < real_t).mean()),
            "fake_recall": float((fake >= fake_t).mean()),
            "uncertain_share": float(((probs >= real_t) & (probs < fake_t)).mean()),
        },
    }
