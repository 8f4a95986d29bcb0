"""Independent references for the SAE-on-a-model tests: the plain Hugging Face model with PyTorch
hooks (no interp.models involved), random prompts, hand-built SAEs."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from analyses.sae import StandardSAE, StandardSAEConfig, make_sae


def hf_model(folder):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def blocks(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def site_module(hf, kind: str, layer: int):
    """(module, how): the HF module whose input ("pre") or output ("post") is the site."""
    block = blocks(hf)[layer]
    if kind == "resid_pre":
        return block, "pre"
    if kind == "z":  # the output projection's input is z of all heads, head-major [b, p, head * d_head]
        return (block.attn.c_proj if hasattr(block, "attn") else block.self_attn.o_proj), "pre"
    if kind == "mlp_out":
        return block.mlp, "post"
    raise ValueError(kind)


def hf_run(hf, tokens, mask, kind, layer, replace=None):
    """(logits [b, p, vocab], the site's activation [b, p, width] before `replace`). `replace`
    maps the activation to its new value."""
    module, how = site_module(hf, kind, layer)
    captured = {}

    def pre_hook(mod, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        captured["x"] = x.detach().clone()
        if replace is None:
            return None
        new = replace(x)
        return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

    def post_hook(mod, args, output):
        captured["x"] = output.detach().clone()
        return None if replace is None else replace(output)

    handle = (module.register_forward_pre_hook(pre_hook, with_kwargs=True) if how == "pre"
              else module.register_forward_hook(post_hook))
    try:
        with torch.no_grad():
            logits = hf(input_ids=tokens, attention_mask=mask.long()).logits
    finally:
        handle.remove()
    return logits, captured["x"]


def random_prompts(n=7, seed=0, vocab=60, max_words=9, unknown_every=3):
    """Texts of random words w3.. of varying length (so batches are padded); every
    `unknown_every`-th prompt holds a word the tokenizer does not know (an <unk> special token)."""
    gen = torch.Generator().manual_seed(seed)
    texts = []
    for i in range(n):
        length = int(torch.randint(3, max_words + 1, (1,), generator=gen))
        words = [f"w{int(w)}" for w in torch.randint(3, vocab, (length,), generator=gen)]
        if unknown_every and i % unknown_every == 1:
            words[length // 2] = "qqq"
        texts.append(" ".join(words))
    return texts


def identity_sae(d_in: int) -> StandardSAE:
    """A ReLU SAE with x_hat = x exactly: latents relu(x) and relu(-x), decoded by +I and -I."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def random_sae(d_in: int, seed: int = 0, arch: str = "topk"):
    """A random SAE with non-zero biases (so that every term of encode/decode counts)."""
    kwargs = {"topk": dict(k=4), "standard": {}, "jumprelu": {}}[arch]
    sae = make_sae(arch, d_in=d_in, d_sae=4 * d_in, seed=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.b_dec.copy_(0.3 * torch.randn(d_in, generator=gen))
        sae.b_enc.copy_(0.1 * torch.randn(4 * d_in, generator=gen))
        if arch == "topk":
            sae.W_enc.mul_(3.0)
    return sae


def hand_attention(hf, model, tokens, real, layer):
    """(A [b, head, q, s], v [b, s, head, d_head] of the key/value head each query head reads,
    z [b, q, head * d_head]) from the HF model: attention probabilities, the value projection
    applied by hand to the attention block's (normed) input, and the output projection's input."""
    c = model.cfg
    block = blocks(hf)[layer]
    attn = block.attn if hasattr(block, "attn") else block.self_attn
    out_proj = attn.c_proj if hasattr(attn, "c_proj") else attn.o_proj
    seen = {}
    h1 = attn.register_forward_pre_hook(lambda m, args, kwargs: seen.__setitem__(
        "x", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    h2 = out_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("z", args[0]))
    try:
        with torch.no_grad():
            out = hf(input_ids=tokens, attention_mask=real.long(), output_attentions=True)
    finally:
        h1.remove()
        h2.remove()
    x = seen["x"]
    with torch.no_grad():
        if hasattr(attn, "c_attn"):  # GPT-2: one fused projection, values last
            v = attn.c_attn(x)[..., 2 * c.d_model:].reshape(*x.shape[:2], c.n_heads, c.d_head)
        else:
            v = attn.v_proj(x).reshape(*x.shape[:2], c.n_kv_heads, c.d_head)
            v = v[:, :, [c.kv_head(h) for h in range(c.n_heads)]]
    return out.attentions[layer], v, seen["z"]
