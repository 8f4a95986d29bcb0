"""auto-circuit's EAP and integrated edge gradients on a local GPT-2 folder; run by
`benchmarks/circuits.py` inside the peer venv (`.venv-peers/auto-circuit`: torch 2.13.0,
auto-circuit 1.0.1, TransformerLens 2.16.1), never in the project's environment.

    python benchmarks/auto_circuit_peer.py --model FOLDER --task TASK.pt --out OUT.json --steps 5

TASK.pt holds the token tensors `clean`, `corrupt` `[batch, pos]` and `answer`, `wrong`
`[batch]` that headlab used; they are fed as they are (no BOS added), and the metric is read at
the last position, as in headlab's task. The TransformerLens model is built offline from the
folder: its `HookedTransformerConfig` is written from the Hugging Face config by hand (TL's
`from_pretrained` looks the name up on the hub), the weights converted by TL's own GPT-2
converter, and loaded without processing (no LayerNorm folding, no centring), so the model is
the checkpoint's. Its logits are checked against the Hugging Face model's on the same tokens.

Writes OUT.json: per method, the scores keyed by MIB edge name (`a0.h1->a2.h3<q>`), in
auto-circuit's convention (the gradient of minus the prompt-averaged logit difference with
respect to each edge's mask, mask 0 = clean, 1 = corrupted), and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def tl_model_from_folder(folder: str):
    """A TransformerLens 2.x HookedTransformer with the raw weights of a local GPT-2 folder,
    and the Hugging Face model it came from."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
    c = hf.config
    if c.model_type != "gpt2" or not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn:
        raise ValueError(f"only plain GPT-2 configs are built here, got {c.model_type} with scale_attn_weights="
                         f"{c.scale_attn_weights}, scale_attn_by_inverse_layer_idx={c.scale_attn_by_inverse_layer_idx}")
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn=c.activation_function,
        normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", default_prepend_bos=False, dtype=torch.float32)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    return model.eval(), hf


def mib_name(node_name: str, dest: bool) -> str:
    """auto-circuit's node names ("Resid Start", "A3.7", "A3.7.Q", "MLP 3", "Resid End") as
    MIB's ("input", "a3.h7", "a3.h7<q>", "m3", "logits")."""
    if node_name == "Resid Start":
        return "input"
    if node_name == "Resid End":
        return "logits"
    if node_name.startswith("MLP "):
        return f"m{node_name[4:]}"
    parts = node_name[1:].split(".")
    name = f"a{parts[0]}.h{parts[1]}"
    return f"{name}<{parts[2].lower()}>" if dest else name


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import auto_circuit
    import transformer_lens
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model

    task = torch.load(args.task)
    clean, corrupt, answer, wrong = task["clean"], task["corrupt"], task["answer"], task["wrong"]
    model, hf = tl_model_from_folder(args.model)
    with torch.no_grad():
        tl_logits = model(clean)
        hf_logits = hf(clean).logits
    logits_max_diff = float((tl_logits - hf_logits).abs().max())
    print(f"[auto-circuit] TransformerLens vs Hugging Face logits on the task's tokens: max |diff| "
          f"{logits_max_diff:.2e} (logit scale {float(hf_logits.abs().max()):.2f})", flush=True)
    del hf

    # what auto-circuit's factorized, q/k/v-separated graph of a TransformerLens model reads
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    for p in model.parameters():
        p.requires_grad_(False)
    patchable = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                                device=torch.device("cpu"))
    dataset = PromptDataset(clean, corrupt, [a.view(1) for a in answer], [w.view(1) for w in wrong])
    diverge = int((clean != corrupt).any(0).int().argmax())
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=diverge, batch_size=len(clean), shuffle=False)

    def scores_by_name(prune_scores) -> dict[str, float]:
        out = {}
        for edge in patchable.edges:
            name = f"{mib_name(edge.src.name, False)}->{mib_name(edge.dest.name, True)}"
            out[name] = float(prune_scores[edge.dest.module_name][edge.patch_idx])
        return out

    results = {"logits_max_diff": logits_max_diff, "logit_scale": float(hf_logits.abs().max()),
               "n_edges": len(patchable.edges),
               "versions": {"auto_circuit": getattr(auto_circuit, "__version__", "1.0.1"),
                            "transformer_lens": transformer_lens.__version__ if hasattr(transformer_lens, "__version__") else "?",
                            "torch": torch.__version__},
               "threads": torch.get_num_threads()}
    runs = {"eap": dict(mask_val=0.0), "eap_ig": dict(integrated_grad_samples=args.steps)}
    for label, kwargs in runs.items():
        start = time.perf_counter()
        prune = mask_gradient_prune_scores(patchable, loader, None, grad_function="logit", answer_function="avg_diff",
                                           **kwargs)
        seconds = time.perf_counter() - start
        results[label] = {"seconds": seconds, "scores": scores_by_name(prune)}
        print(f"[auto-circuit] {label}: {seconds:.1f} s, {len(results[label]['scores'])} edges", flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
