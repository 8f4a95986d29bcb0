"""Special-token framing, one rule for every architecture.

* **Causal models** get one BOS token first: the tokenizer's BOS token, or its EOS token
  when it has no BOS (as TransformerLens does; Qwen2's tokenizers have none). The text
  itself is tokenized without special tokens, so a tokenizer that adds BOS on its own
  (Llama's, Gemma's) never yields two, and GPT-NeoX/Pythia gets BOS like every other
  causal model. `prepend_bos=False` turns it off.
* **Encoders** get their tokenizer's own framing (`[CLS] ... [SEP]` for BERT).

Several texts are tokenized one by one and right-padded together, with a mask that is
True on real tokens, so padding never changes a prompt's own activations in a causal model.
"""

from __future__ import annotations

from typing import Sequence

import torch


def bos_token_id(tokenizer) -> int | None:
    """The id prepended to causal models' prompts (BOS, else EOS), or None if it has neither."""
    return next((i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id) if i is not None), None)


def pad_token_id(tokenizer) -> int:
    """The id used for right-padding (never read: padded positions are masked)."""
    return next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) if i is not None), 0)


def encode_text(tokenizer, text: str, is_causal: bool, prepend_bos: bool | None = None) -> list[int]:
    """Token ids of one text under the framing rule above."""
    if not isinstance(text, str):
        raise TypeError(f"expected a text (str), got {type(text).__name__}")
    if not is_causal:
        if prepend_bos is False:
            raise ValueError("prepend_bos=False applies to causal models; encoders use their tokenizer's framing")
        return list(tokenizer(text)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if prepend_bos is False:
        if not ids:
            raise ValueError(f"{text!r} has no tokens (and prepend_bos=False adds none)")
        return ids
    bos = bos_token_id(tokenizer)
    if bos is None:
        raise ValueError("this tokenizer has neither a BOS nor an EOS token to put first; "
                         "pass prepend_bos=False to tokenize without one")
    return [bos, *ids]


def pad_batch(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into `tokens [batch, pos]` and a bool `mask [batch, pos]`."""
    if len(rows) == 0:
        raise ValueError("at least one prompt is needed, got none")
    width = max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[b, : len(row)] = True
    return tokens, mask
