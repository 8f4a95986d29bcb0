"""SAE training throughput: headlab's `train_saes` against SAELens 6.54.12's `SAETrainer`.

    python benchmarks/sae.py                      # all four architectures, 20 steps each, CPU
    python benchmarks/sae.py --archs topk --steps 40 --device cuda

Setting (the same for both, each run in its own subprocess; SAELens in `.venv-peers/saelens`,
created on first use): d_in 768, d_sae 6144 (8x), batch 4096, k 32; Adam lr 3e-4 (`--lr`), betas
(0.9, 0.999), gradient norm clipped to 1.0 (SAELens always clips), constant learning rate;
ReLU-L1 l1_coefficient 1.0, JumpReLU l0_coefficient 1.0 and bandwidth 0.05, TopK/BatchTopK
aux_loss_coefficient 1.0.

Activations: a fixed synthetic set (seeded): sparse non-negative combinations of 3072 random
unit directions, ~24 active per token, scaled so that E||x|| = sqrt(d_in) (SAELens's
"expected_average_only_in" convention); `--pool` batches of 4096 tokens, cycled.

Both libraries start from the *same* weights (written by headlab, loaded into SAELens's training
SAE): decoder rows of norm 0.1 (unit norm for TopK/BatchTopK), W_enc = W_dec^T, b_dec the
geometric median of the first batch, and for ReLU-L1 and JumpReLU an encoder bias / threshold
that makes each latent fire on k/d_sae of the first batch, so training starts at L0 ~ 32, the
sparsity a run spends nearly all its time at. Caveat, seen here: at lr 3e-4 Adam moves the small
initial encoder weights (~0.004) by ~8% a step, and ReLU and JumpReLU SAEs drift to L0 ~ 600
(10% of latents, where the dense products are used) within 20 steps; `--lr 3e-5` keeps them in
the sparse regime for the whole run. `--fresh-thresholds` (b_enc 0 / threshold 0.01, half the
latents active) times the dense regime of a fresh initialisation.

Timing: wall time of each optimiser step (batch already in memory), the first `--warmup`
steps excluded; tokens/s = batch / median step time. Memory: peak resident memory above the
level before the first step (CPU), or torch.cuda.max_memory_allocated (GPU).

Same answer: both libraries' first step on identical weights and data must give the same
losses (relative difference <= 1e-4: the loss definitions agree), and after the run the mean
MSE loss and L0 of the last 3 steps must agree within 5% (MSE) and 10% (L0). TopK/BatchTopK
may drift apart slightly: headlab keeps decoder rows unit-norm, SAELens rescales by the norms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAELENS_PINS = [["torch==2.13.0"], ["sae-lens==6.54.12"]]
D_IN, D_SAE, BATCH, K = 768, 6144, 4096, 32
LR = 3e-4
HYPER = {"standard": dict(l1_coefficient=1.0), "jumprelu": dict(l0_coefficient=1.0, jumprelu_bandwidth=0.05),
         "topk": dict(k=K, aux_loss_coefficient=1.0), "batchtopk": dict(k=K, aux_loss_coefficient=1.0)}
LOSS_NAMES = {"standard": "l1_loss", "jumprelu": "l0_loss", "topk": "auxiliary_reconstruction_loss",
              "batchtopk": "auxiliary_reconstruction_loss"}


def timed_stream(batches, steps, times):
    """Yields `steps` batches, recording the time of each request (the end of the previous step)."""
    for i in range(steps):
        times.append(time.perf_counter())
        yield batches[i % len(batches)]
    times.append(time.perf_counter())


def worker_headlab(arch, data_file, start_file, steps, device, lr, out):
    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import load_file

    from analyses.sae import make_sae
    from analyses.sae.train import TrainConfig, train_saes
    from benchmarks.common import PeakRSS

    data = load_file(data_file)
    batches = [data[f"batch{i}"].to(device) for i in range(len(data))]
    sae = make_sae(arch, d_in=D_IN, d_sae=D_SAE, device=device, **HYPER[arch])
    start = load_file(start_file)
    with torch.no_grad():
        for name, t in start.items():
            getattr(sae, name).copy_(t)
    cfg = TrainConfig(total_training_steps=steps, lr=lr, max_grad_norm=1.0, b_dec_init="zeros",
                      dead_feature_window=1000 * BATCH)  # SAELens's default window: 1000 steps
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        result = train_saes(sae, timed_stream(batches, steps, times), cfg, progress=False)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else mem.peak_extra
    rows = result.history
    Path(out).write_text(json.dumps({
        "step_times": [b - a for a, b in zip(times[:-1], times[1:])], "peak_bytes": peak,
        "mse": [r["mse_loss"] for r in rows], "sparsity": [r[LOSS_NAMES[arch]] for r in rows],
        "l0": [r["l0"] for r in rows]}))


def worker_saelens(arch, data_file, start_file, steps, device, lr, out):
    import torch
    from safetensors.torch import load_file
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,
                               JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
                               TopKTrainingSAE, TopKTrainingSAEConfig)
    from sae_lens.training.sae_trainer import SAETrainer

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import PeakRSS

    classes = {"standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
               "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig),
               "topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
               "batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig)}
    data = load_file(data_file)
    batches = [data[f"batch{i}"].to(device) for i in range(len(data))]
    sae_cls, cfg_cls = classes[arch]
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, device=device, **HYPER[arch]))
    start = load_file(start_file)
    with torch.no_grad():
        for name, t in start.items():
            getattr(sae, name).copy_(t)
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=BATCH * steps, train_batch_size_samples=BATCH,
                                          lr=lr, lr_end=lr, device=device), sae, iter(batches))
    times, rows = [], []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        for i in range(steps):
            t0 = time.perf_counter()
            output = trainer.step(batches[i % len(batches)])
            trainer.n_training_steps += 1
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            with torch.no_grad():  # outside the timed region
                acts = output.feature_acts.to_dense() if output.feature_acts.is_sparse else output.feature_acts
                rows.append({"mse": output.losses["mse_loss"].item(), "sparsity": output.losses[LOSS_NAMES[arch]].item()
                             if LOSS_NAMES[arch] in output.losses else 0.0, "l0": (acts != 0).sum(-1).float().mean().item()})
            del output, acts
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else mem.peak_extra
    Path(out).write_text(json.dumps({"step_times": times, "peak_bytes": peak, **{
        key: [r[key] for r in rows] for key in ("mse", "sparsity", "l0")}}))


def make_inputs(folder: Path, pool: int, fresh_thresholds: bool, archs):
    """The activation pool and each architecture's starting weights, as safetensors files."""
    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import save_file

    from analyses.sae import make_sae
    from analyses.sae.synthetic import SyntheticData
    from analyses.sae.train import geometric_median

    data = SyntheticData(D_IN, 4 * D_IN, p_active=24 / (4 * D_IN), seed=0)
    batches = [data.sample(BATCH) for _ in range(pool)]
    scale = D_IN ** 0.5 / torch.cat(batches).norm(dim=1).mean()
    batches = [(b * scale).contiguous() for b in batches]
    save_file({f"batch{i}": b for i, b in enumerate(batches)}, str(folder / "data.safetensors"))
    x0 = batches[0]
    b_dec = geometric_median(x0).float()
    for arch in archs:
        sae = make_sae(arch, d_in=D_IN, d_sae=D_SAE, seed=0, **HYPER[arch])
        with torch.no_grad():
            sae.b_dec.copy_(b_dec)
            if arch in ("standard", "jumprelu") and not fresh_thresholds:
                pre = (x0 - b_dec) @ sae.W_enc
                # the value each latent exceeds on a fraction k / d_sae of the first batch
                q = pre.kthvalue(BATCH - BATCH * K // D_SAE, dim=0).values
                if arch == "standard":
                    sae.b_enc.copy_(-q)
                else:
                    sae.threshold.copy_(q.clamp_min(1e-3))
        tensors = {name: p.detach().contiguous() for name, p in sae.named_parameters()}
        save_file(tensors, str(folder / f"start_{arch}.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["topk", "batchtopk", "jumprelu", "standard"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--fresh-thresholds", action="store_true")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lib, arch, data_file, start_file, steps, out = args.worker
        (worker_headlab if lib == "headlab" else worker_saelens)(arch, data_file, start_file, int(steps), args.device,
                                                                 args.lr, out)
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine, markdown_table
    from benchmarks.peers import peer_python

    saelens_python = peer_python("saelens", SAELENS_PINS)
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="sae-bench-"))
    make_inputs(tmp, args.pool, args.fresh_thresholds, args.archs)
    rows, failures = [], []
    for arch in args.archs:
        results = {}
        for lib, python in (("SAELens", saelens_python), ("headlab", Path(sys.executable))):
            out = tmp / f"{lib}_{arch}.json"
            cmd = [str(python), __file__, "--device", args.device, "--lr", str(args.lr), "--worker", lib.lower(), arch,
                   str(tmp / "data.safetensors"), str(tmp / f"start_{arch}.safetensors"), str(args.steps), str(out)]
            subprocess.run(cmd, check=True)
            results[lib] = json.loads(out.read_text())
        speed = {lib: BATCH / statistics.median(r["step_times"][args.warmup:]) for lib, r in results.items()}
        sl, hl = results["SAELens"], results["headlab"]
        first = max(abs(hl[key][0] - sl[key][0]) / max(abs(sl[key][0]), 1e-12) for key in ("mse", "sparsity"))
        last = {lib: {key: statistics.mean(r[key][-3:]) for key in ("mse", "l0")} for lib, r in results.items()}
        mse_diff = abs(last["headlab"]["mse"] - last["SAELens"]["mse"]) / last["SAELens"]["mse"]
        l0_diff = abs(last["headlab"]["l0"] - last["SAELens"]["l0"]) / max(last["SAELens"]["l0"], 1e-12)
        same = first <= 1e-4 and mse_diff <= 0.05 and l0_diff <= 0.10
        if not same:
            failures.append(arch)
        rows.append({
            "architecture": arch, "steps": args.steps, "lr": args.lr,
            "SAELens tok/s": f"{speed['SAELens']:,.0f}", "headlab tok/s": f"{speed['headlab']:,.0f}",
            "speed-up": f"{speed['headlab'] / speed['SAELens']:.2f}x",
            "peak MiB SAELens / headlab": f"{sl['peak_bytes'] / 2**20:,.0f} / {hl['peak_bytes'] / 2**20:,.0f}",
            "step-0 loss rel. diff": f"{first:.1e}",
            "final MSE SAELens / headlab": f"{last['SAELens']['mse']:.2f} / {last['headlab']['mse']:.2f}",
            "final L0 SAELens / headlab": f"{last['SAELens']['l0']:.1f} / {last['headlab']['l0']:.1f}",
            "same answer": "yes" if same else "NO"})
        print(rows[-1], flush=True)
    shutil.rmtree(tmp)
    print()
    print(markdown_table(rows))
    if failures:
        sys.exit(f"the two libraries disagree on {failures}")


if __name__ == "__main__":
    main()
