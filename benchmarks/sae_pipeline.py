"""The whole SAE pipeline, model forward included: headlab against SAELens 6.54.12 on zoo/ioi-small.

    python benchmarks/sae_pipeline.py                 # 1M training tokens, CPU
    python benchmarks/sae_pipeline.py --tokens 200000

Both libraries train a TopK SAE (k 32, d_sae 2048 = 16 x d_model 128) on the residual stream
entering layer 2 (`resid_pre(2)`, TransformerLens's `blocks.2.hook_resid_pre`) from the same
token rows: the recipe's own training texts (`circuits.tasks.ioi_data.training_text`, seed 0),
each with BOS first, concatenated and cut into rows of 32 tokens. Special tokens (BOS) are
excluded from training by both; activations are scaled to E||x|| = sqrt(d_in)
("expected_average_only_in") and the scale is folded into the trained SAE by both. Adam lr 3e-4,
batches of 4096 tokens, 128 rows per model forward, buffers of 16 batches, the scale estimated
on 10 batches, SAELens's default dead-latent window.

- headlab: `ActivationStore` over the token rows and `train_saes_on_store`, in the project's
  environment.
- SAELens: `LanguageModelSAETrainingRunner` with the same token rows as a tokenized dataset and
  a TransformerLens 2.x `HookedTransformer` built offline from the zoo checkpoint (as
  `benchmarks/auto_circuit_peer.py` builds it; its logits are checked against Hugging Face's),
  in `.venv-peers/saelens` (created on first use, never the project's environment). No wandb,
  no checkpoints, no evals during training.

Timed: the wall time from the start of the model's activation pass to the trained SAE, in a
subprocess each (model loading and imports are not timed). Same answer: both SAEs are scored
on the same held-out activations (raw, unscaled: both folded the scale), explained variance
within 0.05 of each other and L0 32 for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "interp" / "zoo" / "checkpoints" / "ioi-small"
SITE, HOOK, LAYER = "resid_pre(2)", "blocks.2.hook_resid_pre", 2
D_SAE, K, BATCH, ROW, BUFFER, LR, NORM_BATCHES = 2048, 32, 4096, 32, 16, 3e-4, 10


def token_rows(n_tokens: int, seed: int):
    """[rows, ROW] token ids: training texts with BOS first, concatenated, cut into rows."""
    import random

    import torch

    sys.path.insert(0, str(ROOT))
    from circuits.tasks.ioi_data import training_text
    from recipes.ioi import encode, tokenizer

    tok, rng, stream = tokenizer(), random.Random(seed), []
    while len(stream) < n_tokens:
        stream += encode(tok, [training_text(rng)[0]])[0]
    n_rows = len(stream) // ROW
    return torch.tensor(stream[:n_rows * ROW]).view(n_rows, ROW)


def write_result(sae, x, seconds: float, out: Path) -> None:
    """The run's time and the SAE's explained variance and L0 on the held-out activations `x`,
    as JSON (both libraries' SAEs have `encode` / `decode`)."""
    import torch

    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    out.write_text(json.dumps({"seconds": seconds, "explained_variance": float(ev),
                               "l0": float((codes != 0).sum(-1).float().mean())}))


def worker_headlab(data: Path, steps: int, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from safetensors.torch import load_file

    from analyses.sae import make_sae
    from analyses.sae.store import ActivationStore
    from analyses.sae.train import TrainConfig, train_saes_on_store
    from interp import load_model

    tensors = load_file(data)
    model = load_model(str(CHECKPOINT))
    sae = make_sae("topk", d_in=model.cfg.d_model, d_sae=D_SAE, k=K)
    start = time.perf_counter()
    store = ActivationStore(model, tensors["train"], SITE, batch_size=BATCH, n_batches_in_buffer=BUFFER,
                            prompts_per_forward=BATCH // ROW, n_norm_estimate_tokens=NORM_BATCHES * BATCH, progress=False)
    train_saes_on_store(sae, store, TrainConfig(total_training_steps=steps, lr=LR, dead_feature_window=1000 * BATCH),
                        progress=False)
    seconds = time.perf_counter() - start
    write_result(sae, tensors["eval_acts"], seconds, out)


def worker_saelens(data: Path, steps: int, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from datasets import Dataset
    from safetensors.torch import load_file
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes import TopKTrainingSAEConfig
    from transformers import PreTrainedTokenizerFast

    from benchmarks.auto_circuit_peer import tl_model_from_folder

    tensors = load_file(data)
    model, hf = tl_model_from_folder(str(CHECKPOINT))
    model.set_tokenizer(PreTrainedTokenizerFast.from_pretrained(str(CHECKPOINT)), default_padding_side="right")
    probe = tensors["train"][:4]
    with torch.no_grad():
        diff = (model(probe) - hf(probe).logits).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"the TransformerLens model's logits differ from Hugging Face's by {diff}")
    dataset = Dataset.from_dict({"input_ids": tensors["train"].tolist()})
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=D_SAE, k=K, normalize_activations="expected_average_only_in"),
        model_name="zoo/ioi-small", hook_name=HOOK, dataset_path="local", is_dataset_tokenized=True, streaming=False,
        context_size=ROW, prepend_bos=False, exclude_special_tokens=[int(model.tokenizer.bos_token_id)],
        training_tokens=steps * BATCH, train_batch_size_tokens=BATCH,
        n_batches_in_buffer=BUFFER * BATCH // ROW,  # SAELens's buffer holds this many times context_size tokens
        store_batch_size_prompts=BATCH // ROW, lr=LR, lr_end=LR, device="cpu", act_store_device="cpu",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, save_final_checkpoint=False, output_path=None,
        n_eval_batches=0, n_batches_for_norm_estimate=NORM_BATCHES, seed=0)
    start = time.perf_counter()
    sae = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model).run()
    seconds = time.perf_counter() - start
    write_result(sae, tensors["eval_acts"], seconds, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (rounded to whole batches)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        lib, data, steps = args.worker
        worker = worker_headlab if lib == "headlab" else worker_saelens
        worker(Path(data), int(steps), Path(data).with_name(f"{lib}.json"))
        return

    sys.path.insert(0, str(ROOT))
    import torch
    from safetensors.torch import save_file

    from benchmarks.common import machine, markdown_table
    from benchmarks.peers import peer_python
    from benchmarks.sae import SAELENS_PINS
    from interp import load_model

    saelens_python = peer_python("saelens", SAELENS_PINS)
    print(f"machine: {machine()}")
    steps = max(1, args.tokens // BATCH)
    model = load_model(str(CHECKPOINT))
    held_out = token_rows(20_000, seed=1)
    with torch.no_grad():
        _, cache = model.run(held_out, capture=[SITE])
    keep = held_out != model.tokenizer.bos_token_id
    folder = Path(tempfile.mkdtemp(prefix="sae-pipeline-"))
    data = folder / "data.safetensors"
    # the store keeps every non-BOS token once per epoch; rows enough for the run plus a spare epoch share
    save_file({"train": token_rows(int(steps * BATCH * 1.1) + 10 * BATCH, seed=0).contiguous(),
               "eval_acts": cache[SITE][keep].contiguous()}, str(data))
    results = {}
    for lib, python in (("SAELens", saelens_python), ("headlab", Path(sys.executable))):
        subprocess.run([str(python), __file__, "--worker", lib.lower(), str(data), str(steps)], check=True)
        results[lib] = json.loads(data.with_name(f"{lib.lower()}.json").read_text())
        print(lib, results[lib], flush=True)
    sl, hl = results["SAELens"], results["headlab"]
    same = abs(sl["explained_variance"] - hl["explained_variance"]) <= 0.05 and abs(sl["l0"] - K) < 0.5 and abs(hl["l0"] - K) < 0.5
    row = {"model, site": f"zoo/ioi-small, {SITE}", "SAE": f"TopK k {K}, d_sae {D_SAE}",
           "training tokens": f"{steps * BATCH:,}", "SAELens s": f"{sl['seconds']:.1f}", "headlab s": f"{hl['seconds']:.1f}",
           "SAELens tok/s": f"{steps * BATCH / sl['seconds']:,.0f}", "headlab tok/s": f"{steps * BATCH / hl['seconds']:,.0f}",
           "speed-up": f"{sl['seconds'] / hl['seconds']:.2f}x",
           "held-out explained variance SAELens / headlab": f"{sl['explained_variance']:.3f} / {hl['explained_variance']:.3f}",
           "same answer": "yes" if same else "NO"}
    print()
    print(markdown_table([row]))
    if not same:
        sys.exit("the two SAEs differ by more than the tolerance")


if __name__ == "__main__":
    main()
