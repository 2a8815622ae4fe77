"""Tiny random-weight CLIP and Idefics2 checkpoints, built from configs, for tests and smoke runs
(``tests/explain``, and the ``ops/`` scripts when they are given no real weights); the service never
builds one.

They exercise the production loaders end to end (tokenizer, processor, weights, LoRA) without a
download: :func:`save_tiny_clip` and :func:`save_tiny_idefics2` write folders that
``from_pretrained`` reads exactly as it reads a real checkpoint. Their outputs are meaningless.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["save_tiny_clip", "save_tiny_idefics2"]

# Characters a byte-level BPE needs for the prompts used here; merges are not needed for a
# character-level tokenizer, and a few hundred ids keep the embedding matrices small.
_CHARS = [chr(c) for c in range(33, 127)]


def save_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Writes a tiny CLIP model, tokenizer and image processor (16x16 input) to ``directory``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=128)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 128,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)  # the template of HuggingFaceM4/idefics2-8b


def save_tiny_idefics2(directory: str | Path, seed: int = 0) -> Path:
    """Writes a tiny Idefics2 model (Mistral-style text, SigLIP-style vision, perceiver resampler),
    a character-level tokenizer with Idefics2's special tokens and chat template, and an image
    processor at 32 px to ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessor,
        Idefics2Processor,
        PreTrainedTokenizerFast,
    )

    directory = Path(directory)
    specials = ["<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in [" ", "\n", *_CHARS]:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters back into text without separators
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<unk>",
        additional_special_tokens=specials[3:],
        padding_side="left",
    )
    tokenizer.chat_template = IDEFICS2_CHAT_TEMPLATE
    n_latents = 4
    config = Idefics2Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        perceiver_config={
            "hidden_size": 32,
            "resampler_n_latents": n_latents,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": 8,
            "num_key_value_heads": 1,
        },
        image_token_id=vocab["<image>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics2ForConditionalGeneration(config).eval()
    image_processor = Idefics2ImageProcessor(
        size={"shortest_edge": 32, "longest_edge": 32}, do_image_splitting=False, do_resize=True
    )
    processor = Idefics2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=n_latents,
        chat_template=IDEFICS2_CHAT_TEMPLATE,
    )
    model.generation_config.eos_token_id = [vocab["<end_of_utterance>"], vocab["</s>"]]
    model.generation_config.pad_token_id = 0
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
