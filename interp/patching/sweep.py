"""Exact activation-patching sweeps: `patch(model, task, component, ...) -> PatchResult`.

Every patch becomes a patched residual stream at one point of one layer, followed by a
suffix run (see `fused.py`). Patches of one layer are stacked on a variant axis and run
together, in chunks sized to a memory budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models import HookedModel
from ..models.errors import check_layer
from .fused import FusedGPT2, RunCache
from .result import PatchResult
from .task import Task

# component -> (what it patches, axes per_position=False, axes per_position=True)
COMPONENTS = {
    "resid_pre": ("residual stream entering each block", ("layer",), ("layer", "pos")),
    "resid_mid": ("residual stream between attention and MLP", ("layer",), ("layer", "pos")),
    "attn_out": ("attention layer output", ("layer",), ("layer", "pos")),
    "mlp_out": ("MLP output", ("layer",), ("layer", "pos")),
    "z": ("each head's output (hook_z, before W_O)", ("layer", "head"), ("layer", "pos", "head")),
    "q": ("each head's queries", ("layer", "head"), ("layer", "pos", "head")),
    "k": ("each head's keys", ("layer", "head"), ("layer", "pos", "head")),
    "v": ("each head's values", ("layer", "head"), ("layer", "pos", "head")),
    "pattern": ("each head's attention pattern", ("layer", "head"), ("layer", "head", "dest_pos")),
}
HEAD_COMPONENTS = ("z", "q", "k", "v", "pattern")


@dataclass(frozen=True)
class Variant:
    """One patch within a layer: `index` is its place in the result (without the layer),
    `pos` the first position it changes (None: every position)."""

    index: tuple[int, ...]
    pos: int | None = None
    head: int | None = None
    src_pos: int | None = None


def patch(
    model: HookedModel,
    task: Task,
    component: str,
    per_position: bool | str = False,
    direction: str = "denoise",
    normalize: bool = True,
    layers: list[int] | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
) -> PatchResult:
    """Patch one component everywhere and measure the task metric after each patch.

    Args:
        model: a GPT-2-architecture `HookedModel`.
        task: clean/corrupted tokens, answers, metric.
        component: one of `COMPONENTS` ("resid_pre", "resid_mid", "attn_out", "mlp_out", "z",
            "q", "k", "v", "pattern").
        per_position: False: patch all positions at once; True: one position at a time;
            "dest_src" (pattern only): one (destination, source) entry at a time.
        direction: "denoise" (clean activation into the corrupted run) or "noise" (corrupted
            activation into the clean run).
        normalize: report (m - m_corrupt) / (m_clean - m_corrupt), so the clean run is 1 and
            the corrupted run 0; otherwise the raw metric, averaged over prompts.
        layers: patch only these layers (default: all).
        memory_budget: bytes of extra memory the batched patched runs may use; default half
            the free GPU memory on CUDA, 1 GiB (or a quarter of free RAM) on CPU.
        progress: show a progress bar.

    Returns:
        `PatchResult` whose `values` has axes `result.axes`: `[layer]` or `[layer, pos]` for
        residual/attn_out/mlp_out, `[layer, head]` or `[layer, pos, head]` for z/q/k/v,
        `[layer, head, dest_pos]` or `[layer, head, dest_pos, src_pos]` for the pattern.
    """
    axes = check_sweep(model, task, component, per_position, direction)
    cfg = model.cfg
    layers = list(range(cfg.n_layers)) if layers is None else [check_layer(l, cfg.n_layers) for l in layers]
    fused = FusedGPT2(model)
    task = task.to(model.device)

    with torch.no_grad():
        clean_run, corrupt_run = fused.run(task.clean), fused.run(task.corrupt)
        m_clean = _metric(fused, _final(fused, clean_run, task), task).mean()
        m_corrupt = _metric(fused, _final(fused, corrupt_run, task), task).mean()
        base, src = (corrupt_run, clean_run) if direction == "denoise" else (clean_run, corrupt_run)

        per_variant = _bytes_per_variant(model, task)
        budget = _default_budget(model.device) if memory_budget is None else int(memory_budget)
        if budget < per_variant:
            raise ValueError(f"memory_budget of {budget:,} bytes is smaller than one patched forward, which "
                             f"needs about {per_variant:,} bytes for this model and task")
        chunk = max(1, budget // per_variant)

        sizes = {"layer": cfg.n_layers, "pos": task.n_pos, "head": cfg.n_heads,
                 "dest_pos": task.n_pos, "src_pos": task.n_pos}
        values = torch.full([sizes[a] for a in axes], float("nan"))
        m_base = m_corrupt if direction == "denoise" else m_clean
        jobs = []
        for layer in layers:
            for group in _by_position(_variants(component, per_position, cfg.n_heads, task.n_pos)):
                live = [v for v in group if not _is_noop(component, base, src, layer, v)]
                for v in group:
                    if v not in live:  # the patched run is the base run itself
                        values[(layer, *v.index)] = m_base.cpu()
                jobs += [(layer, live[i:i + chunk]) for i in range(0, len(live), chunk)]
        for layer, variants in tqdm(jobs, desc=f"patch {component}", disable=not progress):
            p0 = min(min(v.pos if v.pos is not None else 0 for v in variants), int(task.answer_pos.min()))
            site, x = _patched_residual(fused, component, base, src, layer, variants, p0)
            final = fused.suffix(base, layer, site, x, p0, task.answer_pos)
            metric = _metric(fused, final, task).mean(dim=1).cpu()
            for variant, value in zip(variants, metric):
                values[(layer, *variant.index)] = value
        if normalize:
            values = (values - m_corrupt.cpu()) / (m_clean - m_corrupt).cpu()

    return PatchResult(
        values=values, axes=axes, component=component, per_position=per_position, direction=direction,
        normalized=normalize, model_name=cfg.name, task_name=task.name,
        clean_metric=float(m_clean), corrupt_metric=float(m_corrupt),
        pos_labels=model.to_str_tokens(task.clean[:1].cpu()),
        layers=layers,
    )


def check_run(model: HookedModel, task: Task, direction: str) -> None:
    """Checks every patching method shares: the task, its tokens for this model, the direction."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be an interp.patching.Task, got {type(task).__name__}")
    model._tokens(task.clean), model._tokens(task.corrupt)  # vocabulary / context checks
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def check_sweep(model: HookedModel, task: Task, component: str, per_position: bool | str, direction: str) -> tuple[str, ...]:
    """Validate a sweep's arguments (exact or attribution); return the result's axes."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known components: {', '.join(COMPONENTS)}")
    if per_position == "dest_src" and component != "pattern":
        raise ValueError("per_position='dest_src' applies to component='pattern' only")
    if per_position not in (True, False, "dest_src"):
        raise ValueError(f"per_position must be True, False or 'dest_src', got {per_position!r}")
    check_run(model, task, direction)
    if per_position == "dest_src":
        return ("layer", "head", "dest_pos", "src_pos")
    return COMPONENTS[component][2 if per_position else 1]


def _variants(component: str, per_position: bool | str, n_heads: int, n_pos: int) -> list[Variant]:
    """Every patch of one layer, sorted by the first position it changes."""
    if component not in HEAD_COMPONENTS:
        return [Variant((p,), pos=p) for p in range(n_pos)] if per_position else [Variant(())]
    if not per_position:
        return [Variant((h,), head=h) for h in range(n_heads)]
    if component == "pattern":
        if per_position == "dest_src":
            return sorted((Variant((h, d, s), pos=d, head=h, src_pos=s)
                           for h in range(n_heads) for d in range(n_pos) for s in range(n_pos)), key=lambda v: v.pos)
        return sorted((Variant((h, d), pos=d, head=h) for h in range(n_heads) for d in range(n_pos)), key=lambda v: v.pos)
    return [Variant((p, h), pos=p, head=h) for p in range(n_pos) for h in range(n_heads)]


def _by_position(variants: list[Variant]) -> list[list[Variant]]:
    """Variants grouped by the first position they change, so each group's patched runs
    recompute only from that position on."""
    groups: dict[int | None, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.pos, []).append(v)
    return list(groups.values())


def _is_noop(component: str, base: RunCache, src: RunCache, layer: int, v: Variant) -> bool:
    """True when the source activation equals the base one exactly, so the patch changes nothing
    (e.g. at positions before the first token where clean and corrupted prompts differ)."""
    a, b = getattr(base, component)[layer], getattr(src, component)[layer]
    if component == "pattern":  # [B, head, dest, src]
        index = (slice(None), v.head) + ((v.pos,) if v.pos is not None else ()) + ((v.src_pos,) if v.src_pos is not None else ())
    elif component in HEAD_COMPONENTS:  # [B, pos, head, d_head]
        index = (slice(None), v.pos if v.pos is not None else slice(None), v.head)
    else:  # [B, pos, d_model]
        index = (slice(None), v.pos if v.pos is not None else slice(None))
    return torch.equal(a[index], b[index])


def _patched_residual(fused: FusedGPT2, component: str, base: RunCache, src: RunCache, layer: int,
                      variants: list[Variant], p0: int) -> tuple[str, torch.Tensor]:
    """The residual stream `[N, B, pos - p0, d_model]` of each patched run, and where it stands."""
    n = len(variants)

    def stacked(t: torch.Tensor) -> torch.Tensor:  # [B, pos, ...] -> [N, B, pos - p0, ...], a copy
        return t[:, p0:].unsqueeze(0).repeat(n, *([1] * t.ndim))

    def replace(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        for i, v in enumerate(variants):
            if v.pos is None:
                target[i] = source[:, p0:]
            else:
                target[i, :, v.pos - p0] = source[:, v.pos]
        return target

    if component in ("resid_pre", "resid_mid"):
        site = component.removeprefix("resid_")
        return site, replace(stacked(getattr(base, component)[layer]), getattr(src, component)[layer])
    if component == "attn_out":
        attn = replace(stacked(base.attn_out[layer]), src.attn_out[layer])
        return "mid", base.resid_pre[layer][:, p0:] + attn
    if component == "mlp_out":
        mlp = replace(stacked(base.mlp_out[layer]), src.mlp_out[layer])
        return "post", base.resid_mid[layer][:, p0:] + mlp
    z = stacked(base.z[layer])
    idx = torch.arange(n)
    heads = torch.tensor([v.head for v in variants])
    if component == "z":
        for i, v in enumerate(variants):
            if v.pos is None:
                z[i, :, :, v.head] = src.z[layer][:, p0:, v.head]
            else:
                z[i, :, v.pos - p0, v.head] = src.z[layer][:, v.pos, v.head]
    elif component == "pattern":
        pattern = base.pattern[layer][:, heads].transpose(0, 1).clone()  # [N, B, q, k]
        for i, v in enumerate(variants):
            if v.pos is None:
                pattern[i] = src.pattern[layer][:, v.head]
            elif v.src_pos is None:
                pattern[i, :, v.pos] = src.pattern[layer][:, v.head, v.pos]
            else:
                pattern[i, :, v.pos, v.src_pos] = src.pattern[layer][:, v.head, v.pos, v.src_pos]
        values = base.v[layer][:, :, heads].permute(2, 0, 1, 3)  # [N, B, k, d_head]
        z[idx, :, :, heads] = torch.matmul(pattern[:, :, p0:], values)
    else:  # q, k or v: recompute the one patched head's attention
        q, k, v_ = (getattr(base, name)[layer][:, :, heads].permute(2, 0, 1, 3).clone() for name in "qkv")
        patched = {"q": q, "k": k, "v": v_}[component]
        for i, v in enumerate(variants):
            source = getattr(src, component)[layer]
            if v.pos is None:
                patched[i] = source[:, :, v.head]
            else:
                patched[i, :, v.pos] = source[:, v.pos, v.head]
        positions = torch.arange(p0, q.shape[2], device=q.device)
        head_z, _ = fused.attend(q[:, :, p0:, None], k[:, :, :, None], v_[:, :, :, None], positions)
        z[idx, :, :, heads] = head_z[:, :, :, 0]
    return "mid", base.resid_pre[layer][:, p0:] + fused.attn_out(layer, z)


def _final(fused: FusedGPT2, run: RunCache, task: Task) -> torch.Tensor:
    rows = torch.arange(task.batch, device=task.clean.device)
    return fused.final(run.resid_post[-1][rows, task.answer_pos])[None]


def _metric(fused: FusedGPT2, final: torch.Tensor, task: Task) -> torch.Tensor:
    """The task metric `[N, B]` in fp32 from ln_f'd residuals `[N, B, d_model]`."""
    final = final.float()
    if task.metric == "logit_diff":  # two columns of W_U are all it reads
        direction = (fused.w_u[:, task.answer] - fused.w_u[:, task.wrong]).float()  # [d_model, B]
        out = torch.einsum("nbd,db->nb", final, direction)
        if fused.b_u is not None:
            out = out + (fused.b_u[task.answer] - fused.b_u[task.wrong]).float()
        return out
    logits = final @ fused.w_u.float()
    if fused.b_u is not None:
        logits = logits + fused.b_u.float()
    out = task.metric_fn()(logits, task)
    if not isinstance(out, torch.Tensor) or out.shape != final.shape[:2]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the task metric must return one number per prompt: shape {tuple(final.shape[:2])} for "
                         f"logits of shape {tuple(logits.shape)}, got {shape}")
    return out.float()


def _bytes_per_variant(model: HookedModel, task: Task) -> int:
    """Peak extra memory of one patched run (one variant, every prompt), in bytes. The two
    cached runs (clean and corrupted) come on top and are not part of the budget."""
    c = model.cfg
    d_mlp = model.hf_model.config.n_inner or 4 * c.d_model
    elem = torch.finfo(model.dtype).bits // 8
    # Activations alive at once in a suffix run; the MLP's hidden layer and its activation
    # function's temporaries dominate (a budget from the smaller 8*d + 2*d_mlp was overrun 2x).
    per_token = 10 * c.d_model + 5 * d_mlp + 3 * c.n_heads * task.n_pos
    logits = 0 if task.metric == "logit_diff" else 4 * c.d_vocab
    return task.batch * (elem * task.n_pos * per_token + logits)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 4 << 30
    return min(1 << 30, free // 4)
