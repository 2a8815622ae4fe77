"""Training a detector on CIFAKE-layout data: the paper's recipe, or the faster one that beats it.

Images are decoded once (cached) and held as one uint8 tensor; batches are indexed, normalised and
flipped on the fly, so on a 2-core machine the cores run the model rather than JPEG decoders. The
validation and calibration splits are never augmented and never trained on.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fakescope.calibration import fit_temperature
from fakescope.checkpoint import CheckpointMeta, Preprocess, load_checkpoint, save_checkpoint
from fakescope.data import LABELS, load_labelled, make_split
from fakescope.metrics import binary_metrics
from fakescope.models import VARIANTS, create_model
from fakescope.models.freqnet_resnet import FreqNetResNet

__all__ = ["TrainConfig", "predict_arrays", "resolve_device", "train"]

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
RECIPES = ("fast", "paper")


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved into the checkpoint's ``training`` record."""

    data: list[str]
    out: str
    variant: str = "freqnet_resnet_tiny"
    recipe: str = "fast"
    epochs: int = 12
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    val_size: int = 10_000
    calib_size: int = 2_000
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    max_train: int | None = None
    stop_after: int | None = None
    init_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}")
        if self.resume and self.init_from:
            raise ValueError("resume continues a run; init_from starts a new one from trained weights: pick one")
        if self.recipe == "paper" and not 20 <= self.epochs <= 100:
            raise ValueError("the paper's recipe trains for 20 to 100 epochs")


def resolve_device(device: str) -> torch.device:
    """``auto`` takes CUDA when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _batch(
    images: torch.Tensor, idx: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device, flip: bool
) -> torch.Tensor:
    x = images[idx].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean) / std
    if flip:
        mask = torch.rand(x.shape[0], 1, 1, 1, device=device) < 0.5
        x = torch.where(mask, x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_arrays(
    model: FreqNetResNet,
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    batch_size: int = 512,
    desc: str | None = None,
) -> torch.Tensor:
    """Logits for ``(N, H, W, 3)`` uint8 images already at the input size."""
    model.eval()
    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    tensor = torch.from_numpy(images)
    out = []
    for i in tqdm(range(0, len(tensor), batch_size), desc=desc, leave=False, disable=desc is None):
        idx = torch.arange(i, min(i + batch_size, len(tensor)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(_batch(tensor, idx, mean, std, device, flip=False)).float().cpu())
    return torch.cat(out)


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    if cfg.recipe == "paper":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr or 1e-3)
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.1, patience=5, min_lr=1e-6, threshold=1e-3
        )
        return opt, sched
    # No weight decay on norms and biases: decaying them only fights BatchNorm.
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr or 3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr or 3e-3, total_steps=steps, pct_start=0.15, div_factor=20, final_div_factor=200
    )
    return opt, sched


def train(cfg: TrainConfig) -> Path:
    """Trains, calibrates and writes a checkpoint folder at ``cfg.out``; returns it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    size = (32, 32)
    data = load_labelled(cfg.data, size=size)
    split = make_split(data.names, data.labels, cfg.val_size, cfg.calib_size, cfg.seed)
    train_idx = split.train if cfg.max_train is None else split.train[: cfg.max_train]
    logger.info("%d images: train %d, val %d, calib %d", len(data), len(train_idx), len(split.val), len(split.calib))

    train_images = data.images[train_idx]
    mean = tuple(float(v) for v in train_images.reshape(-1, 3).mean(0) / 255.0)
    std = tuple(float(v) for v in train_images.reshape(-1, 3).std(0) / 255.0)
    preprocess = Preprocess(input_size=size, mean=mean, std=std, interpolation="bicubic")  # type: ignore[arg-type]

    model = create_model(cfg.variant).to(device).to(memory_format=torch.channels_last)
    if cfg.init_from:
        # A warm restart: trained weights, a fresh optimiser and schedule. The split is the same
        # (same seed and sizes), so the new run still never sees its validation images.
        start, start_meta = load_checkpoint(cfg.init_from, device)
        if start_meta.variant != cfg.variant:
            raise ValueError(f"--init-from holds {start_meta.variant}, not {cfg.variant}")
        model.load_state_dict(start.state_dict())
        logger.info("initialised from %s", cfg.init_from)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    opt, sched = _optimizer(model, cfg, steps_per_epoch * cfg.epochs)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict[str, float]] = []
    start_epoch = 0
    state_path = out / STATE_FILE
    if cfg.resume and state_path.exists():
        loaded, _ = load_checkpoint(out, device)
        model.load_state_dict(loaded.state_dict())
        state = torch.load(state_path, map_location=device, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]
        torch.set_rng_state(state["rng"])
        logger.info("resumed from epoch %d", start_epoch)

    images_t = torch.from_numpy(train_images)
    labels_t = torch.from_numpy(data.labels[train_idx])
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    val = data.subset(split.val)

    def meta(metrics: dict[str, Any], temperature: float = 1.0) -> CheckpointMeta:
        return CheckpointMeta(
            variant=cfg.variant,
            arch=model.cfg,
            preprocess=preprocess,
            labels=LABELS,
            temperature=temperature,
            training={
                "config": asdict(cfg),
                "split": {
                    "seed": cfg.seed,
                    "train": len(train_idx),
                    "val": len(split.val),
                    "calib": len(split.calib),
                    "val_fingerprint": split.fingerprint(data.names),
                },
                "history": history,
            },
            metrics=metrics,
        )

    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, cfg.stop_after)
    for epoch in range(start_epoch, last_epoch):
        model.train()
        perm = torch.randperm(len(images_t))
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = _batch(images_t, idx, mean_t, std_t, device, flip=True)
            y = labels_t[idx].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if cfg.recipe == "fast":
                sched.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        val_logits = predict_arrays(model, val.images, preprocess, device)
        val_loss = float(F.cross_entropy(val_logits, torch.from_numpy(val.labels)))
        val_acc = float((val_logits.argmax(1).numpy() == val.labels).mean())
        if cfg.recipe == "paper":
            sched.step(val_loss)
        rec = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t0,
            "train_images_per_s": seen / (time.time() - t0),
        }
        history.append(rec)
        logger.info("epoch %d: %s", epoch + 1, rec)
        tqdm.write(f"epoch {epoch + 1}: val_acc {val_acc:.4f} val_loss {val_loss:.4f} ({rec['seconds']:.0f}s)")
        save_checkpoint(out, model, meta({}))
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": history,
                "epoch": epoch + 1,
                "rng": torch.get_rng_state(),
            },
            state_path,
        )

    if last_epoch < cfg.epochs:
        logger.info("stopped after epoch %d of %d; continue with resume", last_epoch, cfg.epochs)
        return out

    # Calibrate on the calibration split, then report on validation: the two never overlap.
    calib = data.subset(split.calib)
    temperature = fit_temperature(
        predict_arrays(model, calib.images, preprocess, device), torch.from_numpy(calib.labels)
    )
    val_logits = predict_arrays(model, val.images, preprocess, device)
    fake_prob = torch.softmax(val_logits / temperature, dim=1)[:, LABELS.index("fake")].numpy()
    metrics = {"validation": binary_metrics(val.labels, fake_prob), "temperature": temperature}
    save_checkpoint(out, model, meta(metrics, temperature))
    logger.info("validation: %s", metrics)
    return out
