"""Small real models for tests: random GPT-2s saved as ordinary Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from interp import load_model
from interp.patching import Task
from interp.zoo.recipes.common import build_word_tokenizer


def random_gpt2_folder(folder: Path, *, n_layer=3, n_head=4, n_embd=32, vocab=60, seed=0, **config) -> Path:
    """Save a random GPT-2 whose biases and LayerNorm parameters are perturbed away from their
    initial 0/1, so that every term of the forward pass is exercised."""
    tok = build_word_tokenizer([f"w{i}" for i in range(vocab)])
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=len(tok), n_positions=32,
                     bos_token_id=tok.bos_token_id, attn_implementation="eager", **config)
    hf = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def random_gpt2(folder: Path, **kwargs):
    return load_model(random_gpt2_folder(folder, **kwargs), device="cpu")


def random_task(model, seed: int = 0, batch: int = 3, n_pos: int = 6, corrupted: slice = slice(1, 3)) -> Task:
    """Random prompts whose corrupted twins differ at the `corrupted` positions, with random
    answer and wrong tokens (ids from 3 up, past the special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, model.cfg.d_vocab, (batch, n_pos), generator=gen)
    corrupt = clean.clone()
    width = len(range(n_pos)[corrupted])
    corrupt[:, corrupted] = torch.randint(3, model.cfg.d_vocab, (batch, width), generator=gen)
    answer, wrong = torch.randint(3, model.cfg.d_vocab, (2, batch), generator=gen)
    return Task(clean, corrupt, answer, wrong, name="random")
