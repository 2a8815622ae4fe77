"""LoRA fine-tuning of the Idefics2 explainer on annotated images.

Usage::

    python -m fakescope.explain.finetune --base HuggingFaceM4/idefics2-8b \\
        --data ../shared/data/genimage_explained/annotations.json --out runs/idefics2-lora

and then ``FAKESCOPE_VLM_LORA=runs/idefics2-lora``.

Data: one or more JSON files, each a list of records::

    {"file": "FAKE/abc.jpg",                         # or "image"; relative to the JSON file's folder
     "label": "fake",                                # optional; records labelled "real" are skipped
     "explanation": {"Artificial smoothness": "The fur on the back is waxy and without grain."}}

``explanation`` is either an object mapping taxonomy names (verbatim) to one sentence, which
trains exactly the prompt and answer format the explainer uses at inference, or a free-text string
(as in ``genimage_explained/annotations.json``), which trains the model to describe what gives an
image away; a string record may list the taxonomy names it is about in ``"artifacts"``. Records
without an explanation are skipped.

Only the language model's attention and MLP projections get adapters: the vision tower and the
perceiver stay frozen, which keeps the adapter small and the image features the base model's.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakescope.explain import ENV_VLM_MODEL
from fakescope.explain.idefics import build_messages, format_answer
from fakescope.explain.loading import check_source, model_kwargs, resolving
from fakescope.explain.taxonomy import BY_NAME
from fakescope.machine import resolve_device
from fakescope.settings import Settings

__all__ = ["FinetuneConfig", "Record", "finetune", "load_records", "main"]

logger = logging.getLogger(__name__)

TARGET_MODULES = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class DataError(ValueError):
    """A training record that cannot be used: unknown artifact name, missing image."""


@dataclass
class Record:
    """One training example: the image, the artifacts the prompt lists, and the answer."""

    image: Path
    artifacts: list[str]
    answer: str


def load_records(path: str | Path) -> list[Record]:
    """Reads one annotation JSON (format in the module docstring).

    Raises:
        DataError: a record names an artifact outside the taxonomy or an image that does not exist.
    """
    path = Path(path)
    records: list[Record] = []
    for k, r in enumerate(json.loads(path.read_text())):
        expl = r.get("explanation")
        if not expl or str(r.get("label", "fake")).lower() == "real":
            continue
        image = path.parent / (r.get("image") or r["file"])
        if not image.is_file():
            raise DataError(f"{path} record {k}: image not found: {image}")
        if isinstance(expl, dict):
            unknown = sorted(set(expl) - set(BY_NAME))
            if unknown:
                raise DataError(f"{path} record {k}: not taxonomy names: {unknown}")
            records.append(Record(image, list(expl), format_answer(expl)))
        else:
            names = list(r.get("artifacts", []))
            unknown = sorted(set(names) - set(BY_NAME))
            if unknown:
                raise DataError(f"{path} record {k}: not taxonomy names: {unknown}")
            records.append(Record(image, names, " ".join(str(expl).split())))
    return records


@dataclass
class FinetuneConfig:
    base: str
    data: list[str]
    out: str
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 2e-4
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"


def _encode(processor: Any, record: Record, device: Any) -> dict[str, Any]:
    """Inputs with labels masked to the answer: the loss is on what the model should write only."""
    from PIL import Image

    with Image.open(record.image) as im:
        image = im.convert("RGB")
    prompt = processor.apply_chat_template(build_messages(record.artifacts), add_generation_prompt=True)
    full = prompt + " " + record.answer + "<end_of_utterance>\n"
    enc = processor(text=[full], images=[[image]], return_tensors="pt")
    n_prompt = processor(text=[prompt], images=[[image]], return_tensors="pt")["input_ids"].shape[1]
    labels = enc["input_ids"].clone()
    labels[:, :n_prompt] = -100
    enc["labels"] = labels
    return {k: v.to(device) for k, v in enc.items()}


def finetune(cfg: FinetuneConfig) -> Path:
    """Trains a LoRA adapter on ``cfg.data`` and saves it (peft format) to ``cfg.out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Idefics2ForConditionalGeneration

    records = [r for d in cfg.data for r in load_records(d)]
    if not records:
        raise DataError(f"no usable records in {cfg.data}")
    source = check_source(cfg.base, "Idefics2 model", ENV_VLM_MODEL)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    with resolving(source, "Idefics2 model"):
        processor = AutoProcessor.from_pretrained(source)
        kwargs = model_kwargs(device)
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            # fp16 activations overflow in training without a loss scaler; bf16 does not.
            kwargs["dtype"] = torch.bfloat16
        base = Idefics2ForConditionalGeneration.from_pretrained(source, **kwargs)
    if not device.startswith("cuda"):
        # transformers decorates `to` with functools.wraps, whose stub type does not bind self.
        base = base.to(device)  # type: ignore[arg-type]
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=TARGET_MODULES, bias="none"
    )
    model = get_peft_model(base, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("LoRA on %s: %d trainable parameters, %d records", source, trainable, len(records))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    rng = random.Random(cfg.seed)
    dev = next(model.parameters()).device
    losses: list[float] = []
    step = 0
    total = cfg.max_steps or cfg.epochs * -(-len(records) // cfg.grad_accum)
    while step < total:
        order = list(range(len(records)))
        rng.shuffle(order)
        for k, idx in enumerate(order):
            batch = _encode(processor, records[idx], dev)
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(next(model.parameters()).dtype)
            loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            if (k + 1) % cfg.grad_accum and k + 1 < len(order):
                continue
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.item()) * cfg.grad_accum)
            logger.info("step %d/%d loss %.4f", step, total, losses[-1])
            if step >= total:
                break
    out = Path(cfg.out)
    model.save_pretrained(str(out))
    (out / "training.json").write_text(
        json.dumps(
            {
                "base": source,
                "data": cfg.data,
                "records": len(records),
                "steps": step,
                "losses": losses,
                "config": {k: v for k, v in vars(cfg).items() if k not in ("data", "out")},
            },
            indent=1,
        )
    )
    logger.info("saved adapter to %s", out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m fakescope.explain.finetune`` (or ``fakescope finetune-explainer``)."""
    p = argparse.ArgumentParser(
        prog="fakescope finetune-explainer", description="LoRA fine-tuning of the Idefics2 explainer"
    )
    p.add_argument("--base", default=Settings().explain.vlm_model, help=f"hub id or folder (default ${ENV_VLM_MODEL})")
    p.add_argument("--data", action="append", required=True, help="annotation JSON (repeatable)")
    p.add_argument("--out", required=True, help="folder for the adapter")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--grad-accum", type=int, default=1, help="records per optimiser step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = finetune(FinetuneConfig(**{k: v for k, v in vars(args).items()}))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
