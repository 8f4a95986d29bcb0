"""Attribution patching (AtP): a first-order estimate of every patch of a sweep from one
forward and one backward pass of the base run (plus one forward of the source run).

    estimate(n) = m_base + (n_src - n_base) . d m / d n   (gradient at the base run)

AtP* (Kramár et al., 2024) fixes its worst failure, saturated attention: for queries and keys
the new attention pattern is computed exactly (softmax included), and only the step from the
pattern onwards is linearised. (AtP*'s second fix, GradDrop, is not implemented.)
"""

from __future__ import annotations

import torch

from ..models import HookedModel
from .engine import Engine, RunCache
from .result import PatchResult
from .sweep import _final, _metric, check_normalizable, check_sweep
from .task import Task

def attribution_patch(
    model: HookedModel,
    task: Task,
    component: str,
    per_position: bool | str = False,
    direction: str = "denoise",
    normalize: bool = True,
    attention_fix: bool = False,
) -> PatchResult:
    """Estimate `patch(model, task, component, per_position, direction)` by AtP (or AtP* with
    `attention_fix=True`); same arguments, same result shape, `method` "atp" / "atp*"."""
    axes = check_sweep(model, task, component, per_position, direction)
    cfg = model.cfg
    engine = Engine(model)
    if component == "resid_mid" and cfg.parallel:
        raise ValueError(f"{cfg.name} runs attention and MLP in parallel, so it has no residual stream between "
                         f"them: estimate resid_pre, attn_out, mlp_in or mlp_out")
    task = task.to(model.device)
    base_tokens, src_tokens = (task.corrupt, task.clean) if direction == "denoise" else (task.clean, task.corrupt)

    with torch.no_grad():
        src = engine.run(src_tokens)
        engine.check(src_tokens, src, task.answer_pos)
    with torch.enable_grad():
        base = engine.run(base_tokens, track_grad=True)
        for t in getattr(base, component):
            t.retain_grad()
        if attention_fix and component in ("q", "k"):
            for t in base.pattern:
                t.retain_grad()
        m_base_prompts = _metric(engine, _final(engine, base, task), task)
        m_base_prompts.mean().backward()
    with torch.no_grad():
        m_base = m_base_prompts.mean().detach()
        m_src = _metric(engine, _final(engine, src, task), task).mean()
        m_clean, m_corrupt = (m_src, m_base) if direction == "denoise" else (m_base, m_src)
        check_normalizable(normalize, m_clean, m_corrupt)
        values = torch.stack([_layer_estimate(engine, component, per_position, base, src, layer, attention_fix)
                              for layer in range(cfg.n_layers)]).float().cpu() + m_base.cpu()
        if normalize:
            values = (values - m_corrupt.cpu()) / (m_clean - m_corrupt).cpu()

    return PatchResult(
        values=values, axes=axes, component=component, per_position=per_position, direction=direction,
        normalized=normalize, model_name=cfg.name, task_name=task.name, clean_metric=float(m_clean),
        corrupt_metric=float(m_corrupt), pos_labels=model.to_str_tokens(task.clean[:1].cpu()),
        layers=list(range(cfg.n_layers)), method="atp*" if attention_fix else "atp",
    )


def _layer_estimate(engine: Engine, component: str, per_position: bool | str, base: RunCache, src: RunCache,
                    layer: int, attention_fix: bool) -> torch.Tensor:
    """The first-order change of the (prompt-averaged) metric for every patch of one layer."""
    if attention_fix and component in ("q", "k"):
        return _attention_fixed(engine, component, per_position, base, src, layer)
    act = getattr(base, component)[layer]
    change = (getattr(src, component)[layer] - act.detach()) * act.grad  # summed over prompts below
    if component == "pattern":  # [B, head, dest, src]
        if per_position == "dest_src":
            return change.sum(0)
        return change.sum((0, 3)) if per_position else change.sum((0, 2, 3))
    if component in ("z", "q", "k", "v"):  # [B, pos, head, d_head]
        return change.sum((0, 3)) if per_position else change.sum((0, 1, 3))
    return change.sum((0, 2)) if per_position else change.sum()  # [B, pos, d_model]


def _attention_fixed(engine: Engine, component: str, per_position: bool, base: RunCache, src: RunCache,
                     layer: int) -> torch.Tensor:
    """AtP* for q or k: the exact new pattern of each patch, linearised from the pattern on.
    A key/value head's estimate sums the query heads that read it."""
    q, k, v = (t[layer].detach() for t in (base.q, base.k, base.v))
    pattern, grad = base.pattern[layer].detach(), base.pattern[layer].grad  # [B, head, dest, src]
    n_pos = q.shape[1]
    positions = torch.arange(n_pos, device=q.device)
    new = src.q[layer] if component == "q" else src.k[layer]
    n_heads = q.shape[2] if component == "q" else k.shape[2]

    def estimate(q2: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:  # one number per head patched
        _, patched = engine.f.attend(layer, q2, k2, v, positions)
        per_query_head = ((patched - pattern) * grad).sum((0, 2, 3))
        return per_query_head.view(n_heads, -1).sum(-1)
    if not per_position:
        return estimate(new, k) if component == "q" else estimate(q, new)
    out = torch.zeros(n_pos, n_heads, dtype=grad.dtype, device=grad.device)
    for p in range(n_pos):
        q2, k2 = q.clone(), k.clone()
        (q2 if component == "q" else k2)[:, p] = new[:, p]
        out[p] = estimate(q2, k2)
    return out
