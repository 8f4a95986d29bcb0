"""Train one or several SAEs on one stream of activation batches.

    saes = {"topk": make_sae("topk", d_in=768, d_sae=6144, k=32), "relu": make_sae("standard", d_in=768, d_sae=6144)}
    result = train_saes(saes, batches, TrainConfig(total_training_steps=10_000), checkpoint_dir="runs/sae-ckpt")

`batches` yields [batch, d_in] tensors (every SAE trains on each) or dicts site -> tensor (each
SAE trains on its site: `sites={"topk": "blocks.3.hook_resid_pre", ...}`, default the SAE's
name). It may also be a function `start_step -> iterable`, so that a resumed run can seek
instead of replaying the batches it already used.

Per step and SAE: the loss of its architecture (`SAE.training_loss`), gradient clipping to
`max_grad_norm` (SAELens clips at 1.0), Adam with a linear learning-rate warm-up and linear
decay to 0, sparsity coefficients warmed up linearly from 0 where the config has `*_warm_up_steps`
(SAELens's schedule), then the architecture's constraint (unit-norm decoder rows for TopK and
BatchTopK, thresholds >= 0 for JumpReLU). A latent is dead once it has not fired for
`dead_feature_window` tokens. b_dec starts at the geometric median of the first batch
(`b_dec_init`; Gao et al.) unless "zeros" or "mean" is asked for.

Checkpoints (`checkpoint_dir/step_<n>/`: each SAE as a SAELens folder + `trainer_state.pt`) are
written to a temporary folder and renamed into place, so an interrupted run always leaves the
last complete checkpoint; `train_saes(..., checkpoint_dir=same)` resumes from it and ends with
the same weights as a run that was never interrupted. Non-finite activations or losses stop
training with an error that names the step and the site, before any parameter is updated.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from analyses.sae.base import SAE, check_activations
from analyses.sae.saelens_io import atomic_folder, read_weights, save_sae

TRAINER_STATE_FILENAME = "trainer_state.pt"
B_DEC_INITS = ("geometric_median", "mean", "zeros")


@dataclass
class TrainConfig:
    """Training-loop settings (SAELens's `SAETrainerConfig` names where it has them).

    Schedules count optimiser steps; the dead-latent and feature-density windows count tokens."""

    total_training_steps: int
    lr: float = 3e-4
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float | None = 1.0
    dead_feature_window: int = 10_000_000  # tokens (Gao et al.)
    feature_sampling_window: int = 10_000_000  # tokens; the density written to sparsity.safetensors
    b_dec_init: str = "geometric_median"
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2

    def __post_init__(self):
        for name in ("total_training_steps", "dead_feature_window", "feature_sampling_window", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr_warm_up_steps", "lr_decay_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.lr_warm_up_steps + self.lr_decay_steps > self.total_training_steps:
            raise ValueError(f"lr_warm_up_steps + lr_decay_steps ({self.lr_warm_up_steps} + {self.lr_decay_steps}) "
                             f"exceed total_training_steps={self.total_training_steps}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")
        if self.checkpoint_every_steps is not None and (
                isinstance(self.checkpoint_every_steps, bool) or not isinstance(self.checkpoint_every_steps, int)
                or self.checkpoint_every_steps < 1):
            raise ValueError(f"checkpoint_every_steps must be a positive integer or None, got {self.checkpoint_every_steps!r}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of `lr` at optimiser step `step` (0-based)."""
        if step < self.lr_warm_up_steps:
            return (step + 1) / self.lr_warm_up_steps
        if step >= self.total_training_steps - self.lr_decay_steps:
            return (self.total_training_steps - step) / self.lr_decay_steps
        return 1.0


def coefficients_at(sae: SAE, step: int) -> dict[str, float]:
    """Sparsity coefficients at `step`: the config's value, warmed up linearly from 0 over its
    `*_warm_up_steps` (value * step / warm_up_steps before then, as SAELens's CoefficientScheduler)."""
    out = {}
    for name, (value_field, warm_field) in sae.coefficient_names().items():
        value = getattr(sae.cfg, value_field)
        warm = getattr(sae.cfg, warm_field) if warm_field else 0
        out[name] = value * min(1.0, step / warm) if warm > 0 else value
    return out


@torch.no_grad()
def geometric_median(x: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Geometric median of the rows of x [n, d] (Weiszfeld's iterations, in float64)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(max_iter):
        dist = (x - y).norm(dim=1).clamp_min(1e-12)
        w = 1.0 / dist
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * max(1.0, float(y.norm())):
            return y_new
        y = y_new
    return y


@dataclass
class SAEState:
    """Per-SAE training statistics (tokens since each latent last fired, density window)."""

    tokens_since_fired: torch.Tensor  # [d_sae] int64
    window_fired: torch.Tensor  # [d_sae] int64: tokens each latent fired on in the current window
    window_tokens: int = 0
    last: dict[str, float] = field(default_factory=dict)  # last step's losses and metrics

    def dead(self, window: int) -> torch.Tensor:
        return self.tokens_since_fired >= window

    def log10_density(self) -> torch.Tensor:
        return torch.log10(self.window_fired.double() / max(self.window_tokens, 1) + 1e-10).float()


@dataclass
class TrainResult:
    saes: dict[str, SAE]
    states: dict[str, SAEState]
    steps: int
    tokens: int
    history: list[dict]  # one row per step and SAE: step, sae, losses, l0, explained_variance, dead_fraction


class _Trainer:
    def __init__(self, saes: dict[str, SAE], cfg: TrainConfig, sites: dict[str, str]):
        self.saes, self.cfg, self.sites = saes, cfg, sites
        self.optimizers = {
            name: torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True)
            for name, sae in saes.items()}
        self.states = {
            name: SAEState(torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=sae.W_enc.device),
                           torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=sae.W_enc.device))
            for name, sae in saes.items()}
        self.step = 0
        self.tokens = 0
        self.history: list[dict] = []
        self.last_checkpoint: Path | None = None

    # ---- checkpoints ----------------------------------------------------------------------

    def save(self, root: Path) -> Path:
        folder = root / f"step_{self.step:09d}"
        with atomic_folder(folder) as tmp:
            for name, sae in self.saes.items():
                save_sae(sae, tmp / name, sparsity=self.states[name].log10_density())
            torch.save({
                "step": self.step, "tokens": self.tokens, "config": asdict(self.cfg),
                "architectures": {name: sae.architecture for name, sae in self.saes.items()},
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "buffers": {name: dict(sae.named_buffers()) for name, sae in self.saes.items()},
                "states": {name: asdict(state) for name, state in self.states.items()},
            }, tmp / TRAINER_STATE_FILENAME)
        self.last_checkpoint = folder
        for old in checkpoints(root)[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old)
        return folder

    def load(self, folder: Path) -> None:
        state = torch.load(folder / TRAINER_STATE_FILENAME, weights_only=True)
        ours = {name: sae.architecture for name, sae in self.saes.items()}
        if state["architectures"] != ours:
            raise ValueError(f"checkpoint {folder} holds SAEs {state['architectures']}, this run trains {ours}")
        for name, sae in self.saes.items():
            weights = read_weights(folder / name)
            with torch.no_grad():
                for pname, p in sae.named_parameters():
                    if tuple(weights[pname].shape) != tuple(p.shape):
                        raise ValueError(f"checkpoint {folder}: {name}.{pname} has shape {list(weights[pname].shape)}, "
                                         f"this SAE's is {list(p.shape)}")
                    p.copy_(weights[pname])
                for bname, b in sae.named_buffers():
                    b.copy_(state["buffers"][name][bname])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
            saved = state["states"][name]
            device = sae.W_enc.device
            self.states[name] = SAEState(saved["tokens_since_fired"].to(device), saved["window_fired"].to(device),
                                         saved["window_tokens"], saved["last"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.last_checkpoint = folder

    # ---- one step -------------------------------------------------------------------------

    def _fail(self, site: str, what: str):
        where = f"at step {self.step}, site {site!r}"
        kept = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint written yet"
        return FloatingPointError(f"training stopped {where}: {what}; parameters were not updated ({kept})")

    def batch_for(self, name: str, batch) -> torch.Tensor:
        site = self.sites[name]
        if isinstance(batch, Mapping):
            if site not in batch:
                raise KeyError(f"step {self.step}: the batch has sites {sorted(batch)}, SAE {name!r} trains on {site!r}")
            x = batch[site]
        else:
            x = batch
        sae = self.saes[name]
        try:
            check_activations(x, sae.cfg.d_in, "activations")
        except ValueError as e:
            if "NaN" in str(e):
                raise self._fail(site, str(e)) from None
            raise ValueError(f"step {self.step}, site {site!r}: {e}") from None
        if x.ndim != 2:
            raise ValueError(f"step {self.step}, site {site!r}: batches must be [batch, d_in], got {list(x.shape)}")
        return x.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)

    def init_b_dec(self, batch) -> None:
        if self.cfg.b_dec_init == "zeros":
            return
        for name, sae in self.saes.items():
            x = self.batch_for(name, batch)
            center = geometric_median(x) if self.cfg.b_dec_init == "geometric_median" else x.double().mean(0)
            with torch.no_grad():
                sae.b_dec.copy_(center.to(sae.b_dec.dtype))

    def train_step(self, batch) -> None:
        outputs = {}
        for name, sae in self.saes.items():  # every loss and gradient first: no update if one fails
            x = self.batch_for(name, batch)
            sae.train()
            sae.zero_grad(set_to_none=True)
            state = self.states[name]
            out = sae.training_loss(x, coefficients_at(sae, self.step), state.dead(self.cfg.dead_feature_window))
            if not torch.isfinite(out.loss):
                raise self._fail(self.sites[name], f"the loss is {out.loss.item()} "
                                 f"({', '.join(f'{k}={v.item():.4g}' for k, v in out.losses.items())})")
            out.loss.backward()
            if self.cfg.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(sae.parameters(), self.cfg.max_grad_norm)
                if not torch.isfinite(norm):
                    raise self._fail(self.sites[name], f"the gradient norm is {norm.item()}")
            outputs[name] = (x, out)
        factor = self.cfg.lr_factor(self.step)
        for name, sae in self.saes.items():
            x, out = outputs[name]
            opt = self.optimizers[name]
            for group in opt.param_groups:
                group["lr"] = self.cfg.lr * factor
            opt.step()
            sae.after_step()
            self.record(name, x, out)
        self.step += 1
        self.tokens += next(iter(outputs.values()))[0].shape[0]

    @torch.no_grad()
    def record(self, name: str, x: torch.Tensor, out) -> None:
        state = self.states[name]
        n = x.shape[0]
        state.tokens_since_fired += n
        state.tokens_since_fired[out.fired > 0] = 0
        if state.window_tokens >= self.cfg.feature_sampling_window:
            state.window_fired.zero_()
            state.window_tokens = 0
        state.window_fired += out.fired
        state.window_tokens += n
        # the batch's explained variance 1 - sum ||x - x_hat||^2 / (sum ||x||^2 - n ||mean x||^2)
        total_variance = torch.linalg.vector_norm(x).double() ** 2 - x.sum(0).double().pow(2).sum() / n
        residual = out.losses["mse_loss"].double() * n
        row = {"step": self.step, "sae": name, **{k: v.item() for k, v in out.losses.items()},
               "l0": out.l0, "explained_variance": (1 - residual / total_variance).item(),
               "dead_fraction": state.dead(self.cfg.dead_feature_window).double().mean().item()}
        state.last = row
        self.history.append(row)


def checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary folders are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step_\d{9}", p.name)]
    return sorted(found, key=lambda p: p.name)


def train_saes(saes: SAE | Mapping[str, SAE], batches: Iterable | Callable[[int], Iterable], cfg: TrainConfig, *,
               sites: Mapping[str, str] | None = None, checkpoint_dir: str | os.PathLike | None = None,
               resume: bool = True, progress: bool = True) -> TrainResult:
    """Train `saes` (one SAE, or a dict name -> SAE) for `cfg.total_training_steps` steps.

    With `checkpoint_dir`, a checkpoint is written every `cfg.checkpoint_every_steps` steps and at
    the end; if the folder already holds one and `resume`, training continues from the latest
    (the SAEs passed in receive its weights). Returns the trained SAEs (the same objects), their
    statistics and a per-step history."""
    if isinstance(saes, SAE):
        saes = {"sae": saes}
    if not saes or not all(isinstance(s, SAE) for s in saes.values()):
        raise TypeError("saes must be an SAE or a non-empty dict of name -> SAE")
    saes = dict(saes)
    sites = {name: (sites or {}).get(name, name) for name in saes}
    trainer = _Trainer(saes, cfg, sites)
    root = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if root is not None and resume and checkpoints(root):
        trainer.load(checkpoints(root)[-1])
    start = trainer.step
    if callable(batches) and not isinstance(batches, Iterable):
        stream = iter(batches(start))
    else:
        stream = iter(batches)
        for skipped in range(start):  # replay what the checkpoint already consumed
            if next(stream, None) is None:
                raise ValueError(f"the batch stream ended after {skipped} batches while skipping the {start} "
                                 "that the checkpoint already used")
    bar = tqdm(total=cfg.total_training_steps, initial=start, disable=not progress, desc="SAE training")
    try:
        while trainer.step < cfg.total_training_steps:
            batch = next(stream, None)
            if batch is None:
                raise ValueError(f"the batch stream ended after {trainer.step} steps; "
                                 f"total_training_steps={cfg.total_training_steps}")
            if trainer.step == 0:
                trainer.init_b_dec(batch)
            trainer.train_step(batch)
            if root is not None and cfg.checkpoint_every_steps and trainer.step % cfg.checkpoint_every_steps == 0:
                trainer.save(root)
            if progress:
                bar.update(1)
                if trainer.step % 10 == 0 or trainer.step == cfg.total_training_steps:
                    bar.set_postfix_str(" ".join(
                        f"{name}: L0 {s.last['l0']:.1f} EV {s.last['explained_variance']:.3f} dead {s.last['dead_fraction']:.2f}"
                        for name, s in trainer.states.items()))
        if root is not None and (trainer.last_checkpoint is None or trainer.last_checkpoint.name != f"step_{trainer.step:09d}"):
            trainer.save(root)
    finally:
        bar.close()
    for sae in saes.values():
        sae.eval()
    return TrainResult(saes, trainer.states, trainer.step, trainer.tokens, trainer.history)


def train_saes_on_store(saes: SAE | Mapping[str, SAE], store, cfg: TrainConfig, *, sites: Mapping[str, object] | None = None,
                        checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
                        progress: bool = True) -> TrainResult:
    """Train `saes` on the batches of an `analyses.sae.store.ActivationStore` (one pass over the
    model serves every SAE), then fold the store's normalisation into them.

    `sites`: SAE name -> site (a Site or any spelling the store accepts); by default the store's
    only site, or else the SAE's name. Each SAE's d_in must equal its site's width. Before
    training, each SAE's metadata receives the store's `sae_metadata(site)` (SAELens's
    `model_name`, `hook_name`, `hook_head_index`, `context_size`, `prepend_bos`,
    `exclude_special_tokens`, ... and `activation_norm_scaling_factor` s), and an SAE on the z of
    all heads gets `reshape_activations="hook_z"`. Checkpoints hold the weights in training units
    (activations * s; metadata `activation_norm_scaling_factor_folded: false`). After training, s
    is folded into the weights (`fold_activation_norm_scaling_factor`), so the returned SAEs
    (the same objects) read raw activations (`activation_norm_scaling_factor_folded: true`)."""
    if isinstance(saes, SAE):
        saes = {"sae": saes}
    if not saes or not all(isinstance(s, SAE) for s in saes.values()):
        raise TypeError("saes must be an SAE or a non-empty dict of name -> SAE")
    saes = dict(saes)
    names: dict[str, str] = {}
    for name, sae in saes.items():
        if sites is not None and name in sites:
            site = sites[name]
        elif len(store.names) == 1:
            site = store.names[0]
        else:
            site = name
        try:
            names[name] = store.site_name(site)
        except (KeyError, ValueError) as e:
            raise ValueError(f"SAE {name!r}: {e}; pass sites={{{name!r}: one of {store.names}}}") from None
        if sae.cfg.d_in != store.d_in[names[name]]:
            raise ValueError(f"SAE {name!r} has d_in={sae.cfg.d_in}, but {names[name]} gives activations of width "
                             f"{store.width_description(names[name])}")
    for name, sae in saes.items():
        site = store.sites[store.names.index(names[name])]
        sae.cfg.metadata.update(store.sae_metadata(site), activation_norm_scaling_factor_folded=False)
        if site.kind == "z" and site.head is None:
            sae.cfg.reshape_activations = "hook_z"
    result = train_saes(saes, store.batches, cfg, sites=names, checkpoint_dir=checkpoint_dir, resume=resume,
                        progress=progress)
    for name, sae in saes.items():
        sae.fold_activation_norm_scaling_factor(store.scaling_factors[names[name]])
        sae.cfg.metadata["activation_norm_scaling_factor_folded"] = True
    return result
