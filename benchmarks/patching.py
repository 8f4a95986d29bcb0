"""Exact activation patching: headlab's engine against TransformerLens's patching functions.

    python benchmarks/patching.py            # every model, CPU (about 30-45 minutes on 2 cores)
    python benchmarks/patching.py --device cuda

(a) a random GPT-2-small-shaped model (12 layers x 12 heads, d_model 768, vocab 50257) and
(b) a random Llama-shaped model (12 layers, 12 query heads sharing 4 key/value heads, d_model
768, gated SiLU MLP of 2048, vocab 32000), 8 prompt pairs of 16 tokens each; (c) the zoo IOI
model on 16 held-out IOI prompts of one template.
Sweeps: each head's output (z) per position, and at all positions. Both libraries run on the
same bridge and inputs in this process; results are checked for equality on every patch both
computed. When TransformerLens's full sweep would take too long, it runs on a random sample of
the sweep's patches (its own `index_df` option) and its time is extrapolated linearly: each
of its patches is one independent forward pass, so its time is proportional to their number.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from benchmarks.common import PeakRSS, machine, markdown_table, timed  # noqa: E402
from interp import load_model  # noqa: E402
from interp.patching import Task, patch  # noqa: E402


def gpt2_small_shaped(folder: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from recipes.common import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(50257 - 3)])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(attn_implementation="eager")).save_pretrained(folder)
    tok.save_pretrained(folder)


def llama_shaped(folder: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from recipes.common import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(32000 - 3)])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def random_task(model, first_diff: int, batch: int = 8, n_pos: int = 16, seed: int = 0) -> Task:
    """Random prompts; the corrupted twin differs in the one token at `first_diff` (like a
    name swap), so positions before it are identical in both runs."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, model.cfg.d_vocab, (batch, n_pos), generator=gen)
    corrupt = clean.clone()
    corrupt[:, first_diff] = torch.randint(3, model.cfg.d_vocab, (batch,), generator=gen)
    answer, wrong = torch.randint(3, model.cfg.d_vocab, (2, batch), generator=gen)
    return Task(clean, corrupt, answer, wrong, name=f"random-diff-at-{first_diff}")


def tl_sweep(model, task, per_position: bool, sample: int | None, seed: int = 0):
    """TransformerLens's own sweep on `sample` random patches (None: all). Returns values at
    those patches, their indices, the time taken, and the sweep's total patch count."""
    from transformer_lens import patching as tlp

    cfg = model.cfg
    rows = torch.arange(task.batch)

    def metric(logits):
        final = logits[rows, task.answer_pos.to(logits.device)]
        return (final[rows, task.answer] - final[rows, task.wrong]).mean()

    axes = ["layer", "pos", "head"] if per_position else ["layer", "head"]
    sizes = {"layer": cfg.n_layers, "pos": task.n_pos, "head": cfg.n_heads}
    full = pd.DataFrame(torch.cartesian_prod(*[torch.arange(sizes[a]) for a in axes]).numpy(), columns=axes)
    index = full if sample is None or sample >= len(full) else full.sample(sample, random_state=seed)
    index = index.rename(columns={"head": "head_index"}) if per_position else index
    setter = tlp.layer_pos_head_vector_patch_setter if per_position else tlp.layer_head_vector_patch_setter
    with torch.no_grad():
        bridge = model._backend.bridge  # the peer runs on TransformerLens's own bridge of this model
        _, clean_cache = bridge.run_with_cache(task.clean.to(model.device))
        values, seconds = timed(tlp.generic_activation_patch, bridge, task.corrupt.to(model.device),
                                clean_cache, metric, setter, "z", index_df=index)
    return values.cpu(), index.to_numpy(), seconds, len(full)


def run_case(label, model, task, per_position, tl_sample, budget, device):
    # One plain forward first: weights loaded from safetensors are memory-mapped, and their
    # first touch would otherwise count as memory the sweep used.
    with torch.no_grad():
        model(task.clean[:1])
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        ours, ours_s = timed(patch, model, task, "z", per_position=per_position, normalize=False,
                             memory_budget=budget, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = rss.peak_extra
    tl_values, index, tl_s, total = tl_sweep(model, task, per_position, tl_sample)
    ours_at = torch.stack([ours.values[tuple(i)] for i in index])
    max_diff = float((ours_at - tl_values).abs().max())
    tl_full = tl_s * total / len(index)
    return {
        "case": label, "sweep": "z per position" if per_position else "z all positions",
        "patches": total, "tl_patches_timed": len(index), "headlab_s": round(ours_s, 2),
        "transformer_lens_s": round(tl_full, 1), "tl_extrapolated": len(index) < total,
        "speedup": round(tl_full / ours_s, 1), "max_abs_diff": max_diff,
        "peak_extra_MiB": round(peak / 2**20, 1), "budget_MiB": round(budget / 2**20, 1),
    }


SHAPES = {"gpt2-small-shaped": gpt2_small_shaped, "llama-shaped": llama_shaped}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tl-sample", type=int, default=48, help="TL patches timed on the big model's per-position sweep")
    parser.add_argument("--budget-mib", type=int, default=256, help="memory budget of the batched runs")
    parser.add_argument("--skip-big", action="store_true", help="only the zoo IOI model")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES),
                        help="which random big models (default: both)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    budget = args.budget_mib << 20
    print(f"machine: {machine()}")
    rows = []
    for name, build in ([] if args.skip_big else [(shape, SHAPES[shape]) for shape in args.shapes]):
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            big = load_model(tmp, device=args.device, dtype=dtype)
        for first_diff in (8, 1):
            task = random_task(big, first_diff)
            rows.append(run_case(f"{name}, diff at {first_diff}", big, task, True, args.tl_sample, budget, args.device))
            print(rows[-1], flush=True)
        task = random_task(big, 8)
        rows.append(run_case(f"{name}, diff at 8", big, task, False, 36, budget, args.device))
        print(rows[-1], flush=True)
        del big
    from circuits.tasks import ioi_task

    ioi = load_model("zoo/ioi-small", device=args.device, dtype=dtype)
    task = ioi_task(ioi, n=16, split="test", seed=0, template="when-went")
    for per_position in (True, False):
        rows.append(run_case("zoo/ioi-small, IOI", ioi, task, per_position, None, budget, args.device))
        print(rows[-1], flush=True)
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
