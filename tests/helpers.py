"""Small real models for tests: random configs of real architectures, saved as ordinary
Hugging Face folders with a tokenizer, and random patching tasks."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, Gemma2Config, Gemma2ForCausalLM, GPTNeoXConfig,
                          GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

from interp import load_model
from interp.patching import Task
from recipes.common import build_word_tokenizer

FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2", "gemma2", "mistral")


def random_gpt2_folder(folder: Path, *, n_layer=3, n_head=4, n_embd=32, vocab=60, seed=0, **config) -> Path:
    """Save a random GPT-2 whose biases and LayerNorm parameters are perturbed away from their
    initial 0/1, so that every term of the forward pass is exercised."""
    tok = build_word_tokenizer([f"w{i}" for i in range(vocab)])
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=len(tok), n_positions=32,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, attn_implementation="eager",
                     **config)
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


def byte_bpe_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `words`, with an EOS token and no BOS token, as
    Qwen2's tokenizers are (the Qwen2 tokenizer class reads only byte-level BPE files)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300 + len(words), special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(words)] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def random_model_folder(folder: Path, family: str, *, n_layers=2, n_heads=4, n_kv_heads=2, d_model=64,
                        d_head=None, d_mlp=128, vocab=60, seed=0, gain=1.0, **config) -> Path:
    """Save a random model of `family` (one of FAMILIES) with weights scaled so that every
    component has a sizeable effect: matrices ~ N(0, gain^2 / fan_in), embeddings ~ N(0, 1),
    norm scales 1 ± 0.2, biases ~ N(0, 0.2^2). Grouped-query families get `n_kv_heads`
    key/value heads. `config` overrides the Hugging Face config's fields."""
    torch.manual_seed(seed)
    words = [f"w{i}" for i in range(vocab)]
    tok = byte_bpe_tokenizer(words) if family == "qwen2" else build_word_tokenizer(words)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id or tok.bos_token_id,
               "pad_token_id": tok.pad_token_id}
    common = dict(vocab_size=len(tok), num_hidden_layers=n_layers, num_attention_heads=n_heads,
                  hidden_size=d_model, intermediate_size=d_mlp, max_position_embeddings=64, **special)
    kv = dict(num_key_value_heads=n_kv_heads, head_dim=d_head or d_model // n_heads)
    if family == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=n_layers, n_head=n_heads, n_embd=d_model,
                                        n_inner=d_mlp, n_positions=64, **special, **config))
    elif family == "gpt_neox":
        hf = GPTNeoXForCausalLM(GPTNeoXConfig(**common, **{"rotary_pct": 0.5, "use_parallel_residual": True, **config}))
    elif family == "llama":
        hf = LlamaForCausalLM(LlamaConfig(**common, **kv, **config))
    elif family == "qwen2":
        hf = Qwen2ForCausalLM(Qwen2Config(**common, **kv, **config))
    elif family == "gemma2":
        hf = Gemma2ForCausalLM(Gemma2Config(**common, **kv, **{"sliding_window": 4, "query_pre_attn_scalar": 16,
                                                               "attn_logit_softcapping": 50.0,
                                                               "final_logit_softcapping": 30.0, **config}))
    elif family == "mistral":
        hf = MistralForCausalLM(MistralConfig(**common, **kv, **{"sliding_window": 5, **config}))
    else:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name:
                base = 0.0 if family == "gemma2" else 1.0  # Gemma stores RMSNorm scales as w - 1
                p.copy_(base + 0.2 * torch.randn_like(p)) if name.endswith("weight") else p.normal_(0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
            elif "embed" in name or "wte" in name or "wpe" in name:
                p.normal_(0, 1.0)
            else:  # linear layers; GPT-2's Conv1D stores [in, out]
                fan_in = p.shape[0] if family == "gpt2" else p.shape[1]
                p.normal_(0, gain / fan_in ** 0.5)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def random_model(folder: Path, family: str, **kwargs):
    return load_model(random_model_folder(folder, family, **kwargs), device="cpu")


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


def hf_zeroed_logit_diff(hf: GPT2LMHeadModel, task: Task, heads) -> float:
    """A plain Hugging Face GPT-2's mean logit(answer) - logit(wrong) at each prompt's answer
    position on `task.clean`, with the output z of `heads` (list of (layer, head)) zeroed by forward pre-hooks on each layer's attention output projection (c_proj
    reads the heads' z, concatenated: head h is columns h*d_head:(h+1)*d_head)."""
    d_head = hf.config.n_embd // hf.config.n_head
    handles = []
    for layer in {layer for layer, _ in heads}:
        columns = [c for lay, head in heads if lay == layer for c in range(head * d_head, (head + 1) * d_head)]

        def zero(module, args, columns=columns):
            z = args[0].clone()
            z[..., columns] = 0
            return (z,)
        handles.append(hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero))
    return hf_hooked_logit_diff(hf, task, handles)


def hf_hooked_logit_diff(hf, task: Task, handles: list) -> float:
    """A plain Hugging Face model's mean logit(answer) - logit(wrong) at each prompt's answer
    position on `task.clean`, run with the hooks of `handles` in place; the hooks are removed."""
    try:
        with torch.no_grad():
            logits = hf(task.clean).logits
    finally:
        for handle in handles:
            handle.remove()
    rows = torch.arange(task.clean.shape[0])
    last = logits[rows, task.answer_pos if task.answer_pos is not None else -1]
    return (last[rows, task.answer] - last[rows, task.wrong]).double().mean().item()
