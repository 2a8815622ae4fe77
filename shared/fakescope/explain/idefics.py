"""Idefics2 explanations: the image and the detected artifacts in, one sentence per artifact out.

The model sees the image and the artifacts the CLIP scorer found (name and description), and is
asked for one line per artifact, ``<name>: <sentence>``. Decoding is greedy under a token budget,
so the same inputs give the same text. :func:`parse_explanation` reads the answer leniently (lines,
bullets, bold, JSON, case and punctuation variations, a near-miss spelling) but keeps only the
artifacts it was asked about, so a sentence never becomes a key and a name outside the taxonomy
never reaches the output. The fine-tuning command (:mod:`fakescope.explain.finetune`) trains on
exactly this prompt and answer format.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from fakescope.explain import ENV_VLM_LORA, ENV_VLM_MODEL
from fakescope.explain.loading import check_source, model_kwargs, once, resolving
from fakescope.explain.taxonomy import BY_NAME
from fakescope.machine import resolve_device

__all__ = ["Idefics2Explainer", "build_messages", "build_prompt_text", "format_answer", "parse_explanation"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 48 * 5


def build_prompt_text(artifacts: Sequence[str]) -> str:
    """The instruction that follows the image; ``artifacts`` are taxonomy names."""
    if not artifacts:
        return "This image was classified as AI-generated. In one sentence, say what in the image gives it away."
    lines = "\n".join(f"- {name}: {BY_NAME[name].description}" for name in artifacts)
    return (
        "This image was classified as AI-generated. An artifact detector found these artifacts:\n"
        f"{lines}\n"
        "For each artifact, write one line: the artifact name exactly as given, a colon, then one sentence "
        "saying where and how it shows in this image. Write nothing else."
    )


def build_messages(artifacts: Sequence[str]) -> list[dict[str, Any]]:
    """The chat of one request: a user turn with the image and the instruction."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": build_prompt_text(artifacts)}]}]


def format_answer(explanation: dict[str, str]) -> str:
    """The answer the prompt asks for, from ``{artifact: sentence}`` (the fine-tuning target)."""
    return "\n".join(f"{name}: {reason.strip()}" for name, reason in explanation.items())


_BULLET = re.compile(r"^\s*(?:[-*\u2022>]+|\d+[.)]|#+)?\s*[\"'*`_]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z])")
_SEPARATORS = " \t:=\u2013\u2014-*_\"'`,"


def _name_pattern(name: str) -> re.Pattern[str]:
    words = re.findall(r"[A-Za-z0-9]+", name)
    return re.compile(r"[\W_]*".join(map(re.escape, words)) + r"(?![A-Za-z0-9])", re.IGNORECASE)


def _first_sentence(text: str) -> str:
    text = text.strip().strip(_SEPARATORS).strip()
    text = _SENTENCE_END.split(text, maxsplit=1)[0].strip().rstrip(",;")
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


def _match_name(key: str, allowed: Sequence[str]) -> str | None:
    norm = lambda s: " ".join(re.findall(r"[a-z0-9]+", s.lower()))  # noqa: E731
    by_norm = {norm(a): a for a in allowed}
    k = norm(key)
    if k in by_norm:
        return by_norm[k]
    close = difflib.get_close_matches(k, list(by_norm), n=1, cutoff=0.85)
    return by_norm[close[0]] if close else None


def parse_explanation(text: str, allowed: Sequence[str]) -> dict[str, str]:
    """Reads ``{artifact: sentence}`` out of model output, keeping only names in ``allowed``.

    Accepts ``Name: sentence`` lines (with bullets, numbering, bold or quotes around the name), a
    JSON object, and near-miss spellings of a name; the first sentence for each name wins. Anything
    that does not start with an allowed name is ignored rather than turned into a key.
    """
    out: dict[str, str] = {}
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            obj = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for key, value in obj.items():
                name = _match_name(str(key), allowed)
                if name and name not in out and isinstance(value, str) and (reason := _first_sentence(value)):
                    out[name] = reason
            if out:
                return out
    # Longest names first: "Scale inconsistencies within the same object class" must not be read as
    # a shorter name that happens to be its prefix.
    patterns = [(a, _name_pattern(a)) for a in sorted(allowed, key=len, reverse=True)]
    for raw in text.splitlines():
        line = _BULLET.sub("", raw, count=1)
        name = None
        for candidate, pat in patterns:
            if m := pat.match(line):
                name, rest = candidate, line[m.end() :]
                break
        if name is None and ":" in line:
            key, rest = line.split(":", 1)
            name = _match_name(key, allowed)
        if name is None or name in out:
            continue
        if reason := _first_sentence(rest):
            out[name] = reason
    return out


@once
def _load(source: str, lora: str | None, device: str) -> tuple[Any, Any]:
    from transformers import AutoProcessor, Idefics2ForConditionalGeneration

    with resolving(source, "Idefics2 model"):
        processor = AutoProcessor.from_pretrained(source)
        model = Idefics2ForConditionalGeneration.from_pretrained(source, **model_kwargs(device))
    if not device.startswith("cuda"):
        # transformers decorates `to` with functools.wraps, whose stub type does not bind self.
        model = model.to(device)  # type: ignore[arg-type]
    if lora:
        from peft import PeftModel

        with resolving(lora, "LoRA adapter"):
            peft_model = PeftModel.from_pretrained(model, lora)
        # Folding the adapter into the weights makes generation as fast as the base model's.
        model = peft_model.merge_and_unload()
    model.eval()
    # Batched generation appends to the right end of each prompt, so prompts are padded on the left.
    processor.tokenizer.padding_side = "left"
    logger.info("loaded Idefics2 %s%s on %s", source, f" + LoRA {lora}" if lora else "", device)
    return model, processor


class Idefics2Explainer:
    """Writes one sentence per detected artifact with an Idefics2 model.

    Args:
        model: a loaded ``Idefics2ForConditionalGeneration`` (LoRA merged in, if any).
        processor: its ``Idefics2Processor``.
        max_new_tokens: the generation budget per image.
        batch_size: images per ``generate`` call.
    """

    def __init__(self, model: Any, processor: Any, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 4):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def load(
        cls, source: str | None, lora: str | None = None, device: str = "auto", **kwargs: Any
    ) -> Idefics2Explainer:
        """Loads (once per process) the base weights at ``source`` and the adapter at ``lora``.

        Raises:
            ExplainerConfigError: nothing configured, or no weights where a path points.
        """
        source = check_source(source, "Idefics2 model", ENV_VLM_MODEL)
        if lora:
            lora = check_source(lora, "LoRA adapter", ENV_VLM_LORA)
        model, processor = _load(source, lora, resolve_device(device))
        return cls(model, processor, **kwargs)

    def encode(self, images: Sequence[np.ndarray], artifacts: Sequence[Sequence[str]]) -> Any:
        """The model inputs for a batch: each image with the prompt listing its ``artifacts``."""
        from PIL import Image

        prompts = [self.processor.apply_chat_template(build_messages(a), add_generation_prompt=True) for a in artifacts]
        ims = [[Image.fromarray(np.asarray(im))] for im in images]
        enc = self.processor(text=prompts, images=ims, return_tensors="pt", padding=True)
        enc = enc.to(next(self.model.parameters()).device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        return enc

    def generate_ids(self, enc: Any, **kwargs: Any) -> Any:
        """Greedy decoding under the token budget; returns only the new tokens."""
        import torch

        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, **kwargs)
        return out[:, enc["input_ids"].shape[1] :]

    def generate(self, images: Sequence[np.ndarray], artifacts: Sequence[Sequence[str]]) -> list[str]:
        """The raw answer for each image, asked about its ``artifacts``."""
        answers: list[str] = []
        for i in range(0, len(images), self.batch_size):
            enc = self.encode(images[i : i + self.batch_size], artifacts[i : i + self.batch_size])
            answers.extend(self.processor.batch_decode(self.generate_ids(enc), skip_special_tokens=True))
        return answers
