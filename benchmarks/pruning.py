"""Speed of a model with 50% of its heads removed against the unpruned model, in one run.

    python benchmarks/pruning.py                  # minilm and a GPT-2-small-shaped model, CPU
    python benchmarks/pruning.py --device cuda --reps 20

Models: `minilm` (BERT, 6 layers x 12 heads, d_model 384), heads chosen by importance on the
shipped sentence-pair task ("once" order); and a randomly initialised GPT-2-small shape
(12 x 12, d_model 768, vocab 50,257), 50% of heads chosen at random (seeded). Both models
are plain Hugging Face modules with eager attention; the timed forward pass is the transformer
body (`base_model`: embeddings and blocks, no unembedding, which pruning does not touch), no
gradients; each timing
is the median of `--reps` alternating runs of the unpruned and pruned model on the same
random tokens. The pruned model's outputs are checked first against the model with the same
heads' z zeroed (`interp.models.ablation`).
Paper (Michel et al.): +17.5% throughput for BERT-base with 50% of heads pruned, batch 16-64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import tempfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.head_removal import remove_heads  # noqa: E402
from analyses.pruning import head_importance, least_important  # noqa: E402
from analyses.sentence_pairs import sentence_pair_task  # noqa: E402
from benchmarks.common import machine, markdown_table, timed  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.models.ablation import ablation  # noqa: E402
from benchmarks.patching import gpt2_small_shaped  # noqa: E402


def forward(hf, tokens):
    """The transformer body (no unembedding, which pruning heads does not touch)."""
    with torch.no_grad():
        return hf.base_model(tokens).last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    tmp = tempfile.TemporaryDirectory()
    for name in ("minilm", "gpt2-small-shape"):
        if name != "minilm":
            gpt2_small_shaped(Path(tmp.name))
        model = load_model(name if name == "minilm" else tmp.name, device="cpu")
        n_heads = model.cfg.n_layers * model.cfg.n_heads
        if name == "minilm":
            heads = least_important(head_importance(model, sentence_pair_task(model)))[: n_heads // 2]
        else:
            perm = torch.randperm(n_heads, generator=torch.Generator().manual_seed(0)).tolist()[: n_heads // 2]
            heads = [(i // model.cfg.n_heads, i % model.cfg.n_heads) for i in perm]
        check = torch.randint(1000, 2000, (2, 16), generator=torch.Generator().manual_seed(1))
        pruned = remove_heads(model, heads)
        with torch.no_grad():
            masked = model.run(check, interventions=ablation(model, heads))[0]
            out = pruned(check).logits if model.cfg.is_causal else forward(pruned, check)
        error = (masked - out).abs().max().item()
        full = model.hf_copy().to(args.device)
        pruned = pruned.to(args.device)
        params = [sum(p.numel() for p in m.parameters()) for m in (full, pruned)]
        vocab = min(model.cfg.d_vocab, 30000)
        for batch in args.batches:
            tokens = torch.randint(1000, vocab, (batch, args.seq), device=args.device)
            times = {"full": [], "pruned": []}
            for _ in range(args.reps + 1):  # the first round warms up
                for label, hf in (("full", full), ("pruned", pruned)):
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    _, seconds = timed(forward, hf, tokens)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times[label].append(seconds)
            full_s, pruned_s = (statistics.median(times[k][1:]) for k in ("full", "pruned"))
            rows.append({"model": name, "heads pruned": f"{len(heads)}/{n_heads}", "batch x seq": f"{batch} x {args.seq}",
                         "params full / pruned (M)": f"{params[0] / 1e6:.1f} / {params[1] / 1e6:.1f}",
                         "full (s)": f"{full_s:.3f}", "pruned (s)": f"{pruned_s:.3f}",
                         "throughput gain": f"{full_s / pruned_s - 1:+.1%}", "max |pruned - masked|": f"{error:.1e}"})
            print(rows[-1])
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
