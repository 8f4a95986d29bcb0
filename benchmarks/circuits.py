"""Edge-level circuit methods: headlab against its references and against auto-circuit.

    python benchmarks/circuits.py --threads 1              # everything, CPU (hours on 2 shared cores)
    python benchmarks/circuits.py --threads 1 --skip-big   # zoo/ioi-small and the small GPT-2 shape only
    python benchmarks/circuits.py --cases edge,acdc,eap    # without auto-circuit (no peer venv)
    python benchmarks/circuits.py --cases eap,peer         # EAP's cost, and EAP / EAP-IG against auto-circuit

Cases, all fp32, metric: logit difference averaged over prompts, scores = metric(patched) -
metric(clean), corrupted senders patched into the clean run:
1. Exact edge patching of every edge (`edge_patch`) against one full model run per edge through
   the model layer's interventions (`reference_edge` of `tests/test_edges.py`, the reference
   the test suite checks `edge_patch` against), on (a) a random GPT-2-small-shaped model
   (12 layers x 12 heads, d_model 768, vocab 50257, 32,491 edges) with 8 prompts x 16 tokens,
   BOS first, the corrupted prompts differing from position 1 on, and (b) zoo/ioi-small on 16
   held-out IOI prompts of one template. On (a) the reference runs a random sample of edges and
   its time is extrapolated linearly (each edge is one independent forward pass).
2. ACDC batched against its sequential reference (`acdc(..., batched=False)`, one masked run of
   the whole model per edge tried; both skip the receivers whose node sends no edge any more,
   as Conmy et al.'s implementation does): the circuits must be identical. On zoo/ioi-small and on a
   random GPT-2 shape of 6 layers x 8 heads, d_model 256. On the GPT-2-small shape the batched
   ACDC runs and the sequential one is extrapolated from timed masked runs (one per edge the
   batched run tried), since it would take many hours here.
3. EAP's cost as a multiple of one plain forward + backward of the Hugging Face model on the
   same batch (logit difference at the last position, gradient to the input embeddings, the
   weights frozen; with the weights' gradients too in a second column).
4. The peer, auto-circuit 1.0.1 (TransformerLens 2.16.1), in its own venv
   (`.venv-peers/auto-circuit`, made by `benchmarks/peers.py`; `benchmarks/auto_circuit_peer.py`
   runs there on the same GPT-2 folder and token tensors): its EAP and its integrated edge
   gradients (`mask_gradient_prune_scores`) against headlab's `eap` and `eap_ig`, edge by edge
   and in time.

Every measurement prints the 1-minute load average before and after it: on a shared machine
the times are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from benchmarks.common import machine, markdown_table, timed  # noqa: E402
from benchmarks.patching import gpt2_small_shaped  # noqa: E402
from benchmarks.peers import peer_python  # noqa: E402
from circuits.discovery import acdc  # noqa: E402
from interp import load_model  # noqa: E402
from interp.models import sites  # noqa: E402
from interp.patching import Task  # noqa: E402
from interp.patching.edges import CircuitRunner, EdgeLayout, eap, eap_ig, edge_patch  # noqa: E402
from tests.test_edges import reference_edge  # noqa: E402

AUTO_CIRCUIT_PINS = [["torch==2.13.0"],
                     ["auto-circuit==1.0.1", "transformer-lens==2.16.1", "attrs", "pyarrow<16", "datasets<3"]]


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def measured(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, its seconds, and the load average before and after, "8.1-8.4"."""
    before = load()
    out, seconds = timed(fn, *args, **kwargs)
    return out, seconds, f"{before}-{load()}"


def gpt2_shaped(folder: Path, n_layer: int, n_head: int, n_embd: int):
    """A random GPT-2 of the given shape (vocab 50257, word tokenizer with a BOS token)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from recipes.common import build_word_tokenizer

    tok = build_word_tokenizer([f"w{i}" for i in range(50257 - 3)])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, attn_implementation="eager")
                    ).save_pretrained(folder)
    tok.save_pretrained(folder)


def bos_task(model, batch: int = 8, n_pos: int = 16, first_diff: int = 1, seed: int = 0) -> Task:
    """Random prompts behind the model's BOS token; the corrupted twin differs in the one token
    at `first_diff`, so with `first_diff=1` no position after BOS can be skipped."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, model.cfg.d_vocab, (batch, n_pos), generator=gen)
    clean[:, 0] = model.tokenizer.bos_token_id
    corrupt = clean.clone()
    corrupt[:, first_diff] = torch.randint(3, model.cfg.d_vocab, (batch,), generator=gen)
    answer, wrong = torch.randint(3, model.cfg.d_vocab, (2, batch), generator=gen)
    return Task(clean, corrupt, answer, wrong, name=f"random-bos-diff-at-{first_diff}")


def edge_names(layout: EdgeLayout) -> dict[str, tuple[int, int]]:
    return {f"{layout.senders[s]}->{layout.receivers[r]}": (s, r) for s, r in layout.exists.nonzero().tolist()}


def check(what: str, max_diff: float, tol: float):
    print(f"  {what}: max |diff| {max_diff:.2e} (tolerance {tol:.1e})", flush=True)
    if not max_diff <= tol:
        raise AssertionError(f"{what}: headlab and the reference differ by {max_diff:.3e} > {tol:.1e}")


# ------------------------------------------------------------------ 1. exact edge patching

def reference_edges(model, task, edges: list[tuple[str, str]]) -> tuple[list[float], float]:
    """One full model run per edge (the clean run with that edge carrying the corrupted
    sender's output); returns each edge's score and the seconds taken, the two cached runs the
    edits read included."""
    start = time.perf_counter()
    with torch.no_grad():
        cached = model.all_sites() + [sites.head_out(layer) for layer in range(model.cfg.n_layers)]
        logits, clean = model.run_with_cache(task.clean, sites=cached)
        _, corrupt = model.run_with_cache(task.corrupt, sites=cached)
        task = task.to(logits.device)
        rows = torch.arange(task.batch, device=logits.device)
        final = logits[rows, task.answer_pos]
        m_clean = float((final[rows, task.answer] - final[rows, task.wrong]).mean())
        scores = [reference_edge(model, task, clean, corrupt, s, r) - m_clean for s, r in edges]
    return scores, time.perf_counter() - start


def edge_patching_case(label: str, model, task: Task, ref_sample: int | None, seed: int = 0) -> dict:
    with torch.no_grad():
        model(task.clean[:1])  # first touch of the memory-mapped weights
    (layout, scores, m_clean, _), ours_s, ours_load = measured(edge_patch, model, task, progress=False)
    names = edge_names(layout)
    edges = list(names)
    sample = edges if ref_sample is None or ref_sample >= len(edges) else random.Random(seed).sample(edges, ref_sample)
    print(f"  headlab: {len(edges)} edges in {ours_s:.1f} s (load {ours_load}); reference on {len(sample)} edges ...",
          flush=True)
    (ref, ref_s), _, ref_load = measured(reference_edges, model, task, [tuple(e.split("->")) for e in sample])
    ours = torch.tensor([float(scores[names[e]]) for e in sample])
    max_diff = float((ours - torch.tensor(ref)).abs().max())
    check(f"{label}: edge_patch vs one run per edge, {len(sample)} edges", max_diff, 1e-4 * max(1.0, abs(m_clean)))
    ref_full = ref_s * len(edges) / len(sample)
    return {"case": label, "method": "exact edge patching", "reference": "one model.run per edge (interventions)",
            "edges": len(edges), "ref_edges_timed": len(sample), "headlab_s": round(ours_s, 2),
            "reference_s": round(ref_full, 1), "extrapolated": len(sample) < len(edges),
            "speedup": round(ref_full / ours_s, 1), "max_abs_diff": f"{max_diff:.1e}",
            "load": f"{ours_load} / {ref_load}"}


# ------------------------------------------------------------------ 2. ACDC

def acdc_case(label: str, model, task: Task, threshold: float) -> dict:
    runner = CircuitRunner(model, task)  # the clean and corrupted runs, shared and not timed
    (layout, fast, fast_scores), fast_s, fast_load = measured(acdc, model, task, threshold, progress=False, runner=runner)
    print(f"  headlab batched ACDC: {int(fast.sum())} of {layout.n_edges} edges kept in {fast_s:.1f} s "
          f"(load {fast_load}); sequential ...", flush=True)
    (_, slow, slow_scores), slow_s, slow_load = measured(acdc, model, task, threshold, batched=False, progress=False,
                                                         runner=runner)
    if not torch.equal(fast, slow):
        raise AssertionError(f"{label}: batched and sequential ACDC kept different edges "
                             f"({int((fast != slow).sum())} differ)")
    scored = ~torch.isnan(slow_scores)
    if not torch.equal(scored, ~torch.isnan(fast_scores)):
        raise AssertionError(f"{label}: batched and sequential ACDC scored different edges")
    max_diff = float((fast_scores[scored] - slow_scores[scored]).abs().max())
    tried = int((scored & (slow_scores != 0)).sum())  # the rest went untried: their node sent no edge
    check(f"{label}: ACDC loss changes, batched vs sequential", max_diff, 1e-4)
    return {"case": label, "method": f"ACDC (KL, threshold {threshold:g})",
            "reference": "acdc(batched=False): one masked run per edge", "edges": layout.n_edges,
            "ref_edges_timed": tried, "headlab_s": round(fast_s, 2), "reference_s": round(slow_s, 1),
            "extrapolated": False, "speedup": round(slow_s / fast_s, 1),
            "max_abs_diff": f"{max_diff:.1e}; same circuit ({int(fast.sum())} edges)",
            "load": f"{fast_load} / {slow_load}"}


def acdc_extrapolated_case(label: str, model, task: Task, threshold: float, runs: int = 3) -> dict:
    """Batched ACDC timed; the sequential one estimated from timed masked runs of the whole
    model, one per edge it would try (the batched run's tried edges, plus one), since it would
    take hours here."""
    runner = CircuitRunner(model, task)
    (layout, fast, scores), fast_s, fast_load = measured(acdc, model, task, threshold, progress=True, runner=runner)
    scored = ~torch.isnan(scores)
    tried = int((scored & (scores != 0)).sum())
    margin = float((scores[scored & (scores != 0)] - threshold).abs().min())
    masks = layout.exists[None]
    runner.kl(masks)
    start = time.perf_counter()
    for _ in range(runs):
        runner.kl(masks)
    per_run = (time.perf_counter() - start) / runs
    slow_s = per_run * (tried + 1)
    print(f"  headlab batched ACDC: {int(fast.sum())} of {layout.n_edges} edges kept, {tried} tried, in {fast_s:.1f} s; "
          f"one masked run {per_run:.3f} s, so the sequential ACDC would take about {slow_s / 3600:.1f} h", flush=True)
    return {"case": label, "method": f"ACDC (KL, threshold {threshold:g})",
            "reference": "acdc(batched=False), one masked run per edge tried (timed runs)", "edges": layout.n_edges,
            "ref_edges_timed": runs, "headlab_s": round(fast_s, 1), "reference_s": round(slow_s, 0),
            "extrapolated": True, "speedup": round(slow_s / fast_s, 1),
            "max_abs_diff": f"not compared (reference not run); closest loss change to the threshold {margin:.1e}",
            "load": fast_load}


# ------------------------------------------------------------------ 3. EAP cost

def forward_backward(model, task: Task, weight_grads: bool) -> float:
    """Seconds of one plain forward + backward of the Hugging Face model under `model` on the
    clean prompts: logits, the task's logit difference averaged over prompts, `.backward()`
    to the input embeddings (and to every weight when `weight_grads`). Best of three."""
    hf = model._backend.hf_model
    rows = torch.arange(task.batch)
    flags = [p.requires_grad for p in hf.parameters()]
    hf.requires_grad_(weight_grads)
    best = float("inf")
    try:
        for _ in range(3):
            start = time.perf_counter()
            with torch.enable_grad():
                embeds = hf.get_input_embeddings()(task.clean).detach().requires_grad_(True)
                logits = hf(inputs_embeds=embeds).logits[rows, task.answer_pos]
                (logits[rows, task.answer] - logits[rows, task.wrong]).mean().backward()
            best = min(best, time.perf_counter() - start)
            hf.zero_grad(set_to_none=True)
    finally:
        for p, flag in zip(hf.parameters(), flags):
            p.requires_grad_(flag)
    return best


def eap_cost_case(label: str, model, task: Task) -> tuple[dict, float, torch.Tensor]:
    eap(model, task)  # warm-up
    (layout, scores, _, _), eap_s, eap_load = measured(eap, model, task)
    fb_s = forward_backward(model, task, weight_grads=False)
    fbw_s = forward_backward(model, task, weight_grads=True)
    print(f"  eap {eap_s:.2f} s; forward+backward {fb_s:.2f} s (to inputs), {fbw_s:.2f} s (with weights)", flush=True)
    row = {"case": label, "method": "EAP, all edges", "reference": "one HF forward+backward (to input embeddings)",
           "edges": layout.n_edges, "ref_edges_timed": "-", "headlab_s": round(eap_s, 2),
           "reference_s": round(fb_s, 2), "extrapolated": False, "speedup": f"cost {eap_s / fb_s:.2f}x fwd+bwd",
           "max_abs_diff": f"{eap_s / fbw_s:.2f}x fwd+bwd with weight grads ({fbw_s:.2f} s)", "load": eap_load}
    return row, eap_s, scores


# ------------------------------------------------------------------ 4. auto-circuit

def auto_circuit_case(label: str, model, folder: Path, task: Task, eap_scores: torch.Tensor, eap_s: float,
                      steps: int, threads: int | None) -> list[dict]:
    python = peer_python("auto-circuit", AUTO_CIRCUIT_PINS)
    (layout, ig_scores, _, _), ig_s, ig_load = measured(eap_ig, model, task, steps=steps, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        task_file, out_file = Path(tmp) / "task.pt", Path(tmp) / "out.json"
        torch.save({"clean": task.clean, "corrupt": task.corrupt, "answer": task.answer, "wrong": task.wrong}, task_file)
        before = load()
        cmd = [str(python), str(ROOT / "benchmarks" / "auto_circuit_peer.py"), "--model", str(folder),
               "--task", str(task_file), "--out", str(out_file), "--steps", str(steps)]
        subprocess.run(cmd + (["--threads", str(threads)] if threads else []), check=True, cwd=tmp,
                       env={**os.environ, "TQDM_DISABLE": "1"})
        peer_load = f"{before}-{load()}"
        peer = json.loads(out_file.read_text())
    if not peer["logits_max_diff"] <= 1e-4 * max(1.0, peer["logit_scale"]):
        raise AssertionError(f"auto-circuit's TransformerLens model is not the checkpoint: logits differ by "
                             f"{peer['logits_max_diff']:.2e}")
    names = edge_names(layout)
    if set(names) != set(peer["eap"]["scores"]):
        raise AssertionError(f"the edge sets differ: {len(names)} (headlab) vs {len(peer['eap']['scores'])} (auto-circuit)")
    order = list(names)

    def theirs(method):  # auto-circuit differentiates minus the metric: flip its sign
        return -torch.tensor([peer[method]["scores"][e] for e in order], dtype=torch.float64)

    def ours(scores):
        return torch.tensor([float(scores[names[e]]) for e in order], dtype=torch.float64)

    a, b = ours(eap_scores), theirs("eap")
    eap_diff = float((a - b).abs().max())
    check(f"{label}: EAP vs auto-circuit, {len(order)} edges (relative to the largest score)",
          eap_diff / float(a.abs().max()), 1e-4)
    # auto-circuit's integrated gradients move every edge's mask from 0 (clean) to 1 (corrupted)
    # together and multiply each gradient by (corrupted - current) sender outputs; EAP-IG moves
    # the input embeddings and multiplies by (corrupted - clean). Different quantities: compared,
    # not checked.
    a_ig, b_ig = ours(ig_scores), theirs("eap_ig") / steps
    corr = float(torch.corrcoef(torch.stack([a_ig, b_ig]))[0, 1])
    print(f"  EAP-IG vs auto-circuit's integrated edge gradients: Pearson r {corr:.3f}, max |diff| "
          f"{float((a_ig - b_ig).abs().max()):.2e} of scores up to {float(a_ig.abs().max()):.2e} (different paths)",
          flush=True)
    common = {"case": label, "edges": len(order), "ref_edges_timed": len(order), "extrapolated": False,
              "load": f"{ig_load} / {peer_load} (peer)"}
    return [
        {**common, "method": "EAP", "reference": "auto-circuit EAP (mask gradients at 0)", "headlab_s": round(eap_s, 2),
         "reference_s": round(peer["eap"]["seconds"], 1), "speedup": round(peer["eap"]["seconds"] / eap_s, 1),
         "max_abs_diff": f"{eap_diff:.1e} (rel {eap_diff / float(a.abs().max()):.1e}); TL vs HF logits "
                         f"{peer['logits_max_diff']:.1e}"},
        {**common, "method": f"EAP-IG, {steps} steps", "reference": f"auto-circuit integrated edge gradients, {steps} samples",
         "headlab_s": round(ig_s, 2), "reference_s": round(peer["eap_ig"]["seconds"], 1),
         "speedup": round(peer["eap_ig"]["seconds"] / ig_s, 1),
         "max_abs_diff": f"not the same quantity: Pearson r {corr:.2f}"},
    ]


CASES = ("edge", "acdc", "eap", "peer")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); 1 on a busy machine")
    parser.add_argument("--ref-sample", type=int, default=64, help="reference edges timed on the GPT-2-small shape")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--skip-big", action="store_true", help="no GPT-2-small-shaped model")
    parser.add_argument("--skip-mid", action="store_true", help="no ACDC on the 6x8 GPT-2 shape")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of {', '.join(CASES)} (peer: auto-circuit's EAP and EAP-IG on the "
                             "GPT-2-small shape, after our EAP there); default all")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    if not cases <= set(CASES):
        parser.error(f"--cases takes {', '.join(CASES)}; got {args.cases!r}")
    if "peer" in cases:
        cases.add("eap")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; load average {os.getloadavg()}; cases {sorted(cases)}", flush=True)
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        print(row, flush=True)

    from circuits.tasks import ioi_task

    ioi = load_model("zoo/ioi-small")
    ioi_t = ioi_task(ioi, n=16, split="test", seed=0, template="when-went")
    if "edge" in cases:
        print("zoo/ioi-small: edge patching", flush=True)
        add(edge_patching_case("zoo/ioi-small, 16 IOI prompts", ioi, ioi_t, None))
    if "acdc" in cases:
        print("zoo/ioi-small: ACDC", flush=True)
        add(acdc_case("zoo/ioi-small, 16 IOI prompts", ioi, ioi_t, threshold=0.03))
    if "eap" in cases:
        add(eap_cost_case("zoo/ioi-small, 16 IOI prompts", ioi, ioi_t)[0])

    if "acdc" in cases and not args.skip_mid:
        with tempfile.TemporaryDirectory() as tmp:
            gpt2_shaped(Path(tmp), n_layer=6, n_head=8, n_embd=256)
            mid = load_model(tmp)
        mid_label = "GPT-2 shape 6x8, d_model 256, 8x16 tokens, diff at 1"
        print(f"{mid_label}: ACDC", flush=True)
        # Below 1e-4 some loss changes of this random model fall within fp32 noise (~3e-7) of the
        # threshold, where the batched and sequential runs may decide differently
        add(acdc_case(mid_label, mid, bos_task(mid), threshold=1e-4))
        del mid

    if not args.skip_big:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            gpt2_small_shaped(folder)
            big = load_model(tmp)
            task = bos_task(big)
            label = "GPT-2-small shape, 8x16 tokens, diff at 1"
            if "eap" in cases:
                print(f"{label}: EAP cost", flush=True)
                row, eap_s, eap_scores = eap_cost_case(label, big, task)
                add(row)
            if "peer" in cases:
                print(f"{label}: auto-circuit", flush=True)
                for row in auto_circuit_case(label, big, folder, task, eap_scores, eap_s, args.steps, args.threads):
                    add(row)
            if "acdc" in cases:
                print(f"{label}: ACDC", flush=True)
                add(acdc_extrapolated_case(label, big, task, threshold=3e-5))
            if "edge" in cases:
                print(f"{label}: edge patching", flush=True)
                add(edge_patching_case(label, big, task, args.ref_sample))
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
