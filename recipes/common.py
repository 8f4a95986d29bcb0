"""Pieces every zoo recipe shares: a word-level tokenizer, a GPT-2 config, a seeded
training loop, and an atomic checkpoint writer (Hugging Face folder + model card).

Zoo models are ordinary Hugging Face GPT-2 folders (safetensors + config + tokenizer), so they
load through the same local-folder path as any real model.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one token per whitespace/punctuation-separated word.

    Ids 0, 1, 2 are `<bos>`, `<pad>`, `<unk>`; `words` follow in the given order. The tokenizer
    does not add BOS itself: the model layer prepends it, as TransformerLens does.
    """
    if len(set(words)) != len(words):
        raise ValueError("build_word_tokenizer: the word list has duplicates")
    vocab = {w: i for i, w in enumerate([BOS, PAD, UNK, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, pad_token=PAD, unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def gpt2_config(tokenizer: PreTrainedTokenizerFast, *, n_layer: int, n_head: int, n_embd: int,
                n_positions: int, tie_word_embeddings: bool = True) -> GPT2Config:
    """A GPT-2 config for a zoo model: no dropout, eager attention, the tokenizer's special ids."""
    return GPT2Config(
        vocab_size=len(tokenizer), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        n_positions=n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie_word_embeddings,
        attn_implementation="eager",
    )


def train_lm(
    model: GPT2LMHeadModel,
    sample_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    seed: int,
    warmup: int = 200,
    weight_decay: float = 0.01,
    log_every: int = 250,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Train `model` on next-token prediction; returns the loss of every step.

    `sample_batch(gen)` returns `tokens [batch, pos]` (long) and `loss_mask [batch, pos]` (bool,
    True where the *target* token at that position counts; position 0 is never a target). A
    floating-point `loss_mask` weighs each target instead: the loss is the weighted mean.
    The learning rate warms up linearly for `warmup` steps, then follows a cosine to 10%.
    Everything random draws from one generator seeded with `seed`, so a recipe is repeatable.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    losses: list[float] = []
    start = time.time()
    for step in range(steps):
        tokens, loss_mask = sample_batch(gen)
        logits = model(tokens).logits[:, :-1]
        targets = tokens[:, 1:]
        mask = loss_mask[:, 1:]
        if mask.dtype == torch.bool:
            loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        else:
            per_target = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            loss = (per_target * mask).sum() / mask.sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            log(f"step {step:6d}  loss {recent:.4f}  lr {lr_at(step):.2e}  {time.time() - start:6.0f}s")
    model.eval()
    return losses


def save_checkpoint(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, folder: Path,
                    card: dict, card_markdown: str) -> Path:
    """Write a Hugging Face model folder plus `card.json` and `MODEL_CARD.md`, atomically.

    Everything is written into a temporary sibling folder which then replaces `folder`, so an
    interrupted run never leaves a half-written checkpoint where a good one stood.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "MODEL_CARD.md").write_text(card_markdown)
        # mkdtemp and safetensors create owner-only files; a shipped checkpoint is world-readable.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
