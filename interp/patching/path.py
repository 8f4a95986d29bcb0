"""Path patching (Wang et al., 2022): the effect of sender heads on the metric through one
path only — their direct contribution to chosen receivers' query/key/value inputs, or to the
residual stream at the end.

For each sender head `s`:
1. Run the base prompts with `s`'s output taken from the source run and **every other
   attention head frozen** at its base value (MLPs are recomputed). Record the receivers'
   inputs (q, k or v of each receiver head), or, for `receivers="resid"`, the final residual.
2. Run the base prompts again with only the receivers' inputs replaced by those values;
   measure the metric. For "resid", step 1's final residual gives the metric directly.

Senders of one layer are stacked on a variant axis and run together, like the sweeps.
Under grouped-query attention a receiver's k or v input is its own (ungrouped) copy: only
the receiver query head sees the patched keys or values, not the other heads of its group.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models import HookedModel
from ..models.errors import check_head, check_layer
from .engine import Engine, RunCache
from .result import PatchResult
from .sweep import _bytes_per_variant, _chunk, _final, _metric, check_normalizable, check_run
from .task import Task


def path_patch(
    model: HookedModel,
    task: Task,
    receivers: list[tuple[int, int]] | str,
    receiver_input: str = "v",
    direction: str = "denoise",
    normalize: bool = True,
    memory_budget: int | None = None,
    progress: bool = True,
) -> PatchResult:
    """Patch every possible sender head along its path into `receivers`.

    Args:
        receivers: `[(layer, head), ...]` receiver heads, or "resid" for the residual stream
            at the end of the model (the sender's direct effect on the logits, through MLPs).
        receiver_input: "q", "k" or "v": which input of the receiver heads the path enters.
        direction: "denoise" (senders take clean values in the corrupted run) or "noise".
    Returns:
        `PatchResult` with axes `[layer, head]` over senders; senders in or after the last
        receiver's layer have no path and are NaN.
    """
    cfg = model.cfg
    check_run(model, task, direction)
    if receivers == "resid":
        receiver_heads: list[tuple[int, int]] = []
        last_layer = cfg.n_layers
    else:
        if isinstance(receivers, str) or not receivers:
            raise ValueError("receivers must be a non-empty list of (layer, head) pairs, or 'resid'")
        if receiver_input not in ("q", "k", "v"):
            raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}")
        receiver_heads = [(check_layer(l, cfg.n_layers), check_head(h, cfg.n_heads)) for l, h in receivers]
        last_layer = max(l for l, _ in receiver_heads)
    engine = Engine(model)
    task = task.to(model.device)
    by_layer: dict[int, list[int]] = {}
    for l, h in receiver_heads:
        by_layer.setdefault(l, []).append(h)

    with engine.sweeping():
        clean_run, corrupt_run = engine.run(task.clean), engine.run(task.corrupt)
        engine.check(task.clean, clean_run, task.answer_pos)
        m_clean = _metric(engine, _final(engine, clean_run, task), task).mean()
        m_corrupt = _metric(engine, _final(engine, corrupt_run, task), task).mean()
        check_normalizable(normalize, m_clean, m_corrupt)
        base, src = (corrupt_run, clean_run) if direction == "denoise" else (clean_run, corrupt_run)
        per_variant = 2 * _bytes_per_variant(model, task)
        chunk = _chunk(model.device, memory_budget, per_variant)
        values = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
        jobs = [(layer, list(range(h, min(h + chunk, cfg.n_heads))))
                for layer in range(min(last_layer, cfg.n_layers)) for h in range(0, cfg.n_heads, chunk)]
        for layer, senders in tqdm(jobs, desc="path patch", disable=not progress):
            final, captured = _frozen_run(engine, base, src, layer, senders, by_layer, receiver_input, task)
            if receivers != "resid":
                first = min(l for l in by_layer if l > layer) if any(l > layer for l in by_layer) else None
                final = _receiver_run(engine, base, first, by_layer, captured, receiver_input, task, len(senders))
            values[layer, senders] = _metric(engine, final, task).mean(dim=1).cpu()
        if normalize:
            values = (values - m_corrupt.cpu()) / (m_clean - m_corrupt).cpu()

    return PatchResult(
        values=values, axes=("layer", "head"), component=f"path->{receivers if receivers == 'resid' else receiver_input}",
        per_position=False, direction=direction, normalized=normalize, model_name=cfg.name, task_name=task.name,
        clean_metric=float(m_clean), corrupt_metric=float(m_corrupt),
        pos_labels=model.to_str_tokens(task.clean[:1].cpu()), layers=list(range(cfg.n_layers)), method="path",
    )


def _frozen_run(engine: Engine, base: RunCache, src: RunCache, layer: int, senders: list[int],
                by_layer: dict[int, list[int]], receiver_input: str, task: Task):
    """Step 1 for senders (`layer`, h) of `senders`: other heads frozen, MLPs recomputed.

    Returns the final residual at the answer positions `[N, B, d_model]` and, per receiver
    layer after `layer`, the receivers' inputs `[N, B, pos, n_receivers, d_head]`.
    """
    f, group = engine.f, engine.cfg.n_heads // engine.cfg.n_kv_heads
    n_pos = task.n_pos
    rot = engine.rotary(n_pos, torch.arange(n_pos, device=task.clean.device))
    heads = torch.tensor(senders)
    z = base.z[layer].unsqueeze(0).repeat(len(senders), 1, 1, 1, 1)
    z[torch.arange(len(senders)), :, :, heads] = src.z[layer][:, :, heads].permute(2, 0, 1, 3)
    x = engine.block_output(layer, base.resid_pre[layer], f.attn_out(layer, z))
    captured: dict[int, torch.Tensor] = {}
    for j in range(layer + 1, engine.n_layers):
        if j in by_layer:
            q, k, v = f.qkv(j, x, rot)
            receivers = torch.tensor(by_layer[j])
            if receiver_input == "q":
                captured[j] = q[:, :, :, receivers]
            else:  # the key/value head each receiver reads
                captured[j] = {"k": k, "v": v}[receiver_input][:, :, :, receivers // group]
        x = engine.block_output(j, x, base.attn_out[j])
    rows = torch.arange(task.batch, device=x.device)
    return f.final(x[:, rows, task.answer_pos]), captured


def _receiver_run(engine: Engine, base: RunCache, first: int | None, by_layer: dict[int, list[int]],
                  captured: dict[int, torch.Tensor], receiver_input: str, task: Task, n: int) -> torch.Tensor:
    """Step 2: the base run with the receivers' inputs replaced, from the first receiver layer."""
    f, group = engine.f, engine.cfg.n_heads // engine.cfg.n_kv_heads
    rows = torch.arange(task.batch, device=task.clean.device)
    if first is None:  # no receiver after these senders: nothing changes
        return f.final(base.resid_post[-1][rows, task.answer_pos]).expand(n, -1, -1)
    x = base.resid_pre[first].unsqueeze(0).expand(n, -1, -1, -1)
    positions = torch.arange(task.n_pos, device=x.device)
    rot = engine.rotary(task.n_pos, positions)
    for j in range(first, engine.n_layers):
        q, k, v = f.qkv(j, x, rot)
        if j in captured:
            if receiver_input == "q":
                q = q.clone()
                q[:, :, :, by_layer[j]] = captured[j]
            else:  # ungroup: one copy of the keys/values per query head, the receivers' replaced
                k, v = k.repeat_interleave(group, dim=3), v.repeat_interleave(group, dim=3)
                patched = {"k": k, "v": v}[receiver_input]
                patched[:, :, :, by_layer[j]] = captured[j]
        z, _ = f.attend(j, q, k, v, positions)
        x = engine.block_output(j, x, f.attn_out(j, z))
    return f.final(x[:, rows, task.answer_pos])
