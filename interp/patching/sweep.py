"""Exact activation-patching sweeps: `patch(model, task, component, ...) -> PatchResult`.

Every patch becomes a patched residual stream at one point of one layer, followed by a
suffix run (see `engine.py`). Patches of one layer are stacked on a variant axis and run
together, in chunks sized to a memory budget. Any causal model of a described family runs
(GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Gemma2); encoders are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models import HookedModel
from ..models.errors import check_layer
from .components import COMPONENTS, HEAD_COMPONENTS
from .engine import Engine, RunCache, mlp_rows
from .result import PatchResult
from .task import Task


@dataclass(frozen=True)
class Variant:
    """One patch within a layer: `index` is its place in the result (without the layer),
    `pos` the first position it changes (None: every position). `head` is a key/value head
    for k and v patches."""

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
    shard: tuple[int, int] | None = None,
) -> PatchResult:
    """Patch one component everywhere and measure the task metric after each patch.

    Args:
        model: a causal `HookedModel` of a described family.
        task: clean/corrupted tokens, answers, metric.
        component: one of `COMPONENTS` ("resid_pre", "resid_mid", "attn_out", "mlp_in",
            "mlp_out", "z", "q", "k", "v", "pattern"). Under grouped-query attention k and v
            are patched per key/value head (axis "kv_head"), as their activations are.
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
        shard: `(rank, world_size)`: compute only this share of the batched patch runs and
            leave the others NaN (`interp.distributed` runs the shares and merges them).

    Returns:
        `PatchResult` whose `values` has axes `result.axes`: `[layer]` or `[layer, pos]` for
        residual/attn_out/mlp_in/mlp_out, `[layer, head]` or `[layer, pos, head]` for z/q/k/v
        (`kv_head` for k/v under grouped-query attention), `[layer, head, dest_pos]` or
        `[layer, head, dest_pos, src_pos]` for the pattern.
    """
    axes = check_sweep(model, task, component, per_position, direction)
    cfg = model.cfg
    layers = check_layers(layers, cfg.n_layers)
    engine = Engine(model)
    if component == "resid_mid" and cfg.parallel:
        raise ValueError(f"{cfg.name} runs attention and MLP in parallel, so it has no residual stream between "
                         f"them: patch resid_pre, attn_out, mlp_in or mlp_out")
    task = task.to(model.device)

    with engine.sweeping():
        clean_run, corrupt_run = engine.run(task.clean), engine.run(task.corrupt)
        engine.check(task.clean, clean_run, task.answer_pos)
        m_clean = _metric(engine, _final(engine, clean_run, task), task).mean()
        m_corrupt = _metric(engine, _final(engine, corrupt_run, task), task).mean()
        check_normalizable(normalize, m_clean, m_corrupt)
        base, src = (corrupt_run, clean_run) if direction == "denoise" else (clean_run, corrupt_run)

        per_variant = _bytes_per_variant(model, task)
        chunk = _chunk(model.device, memory_budget, per_variant)

        n_heads = cfg.n_kv_heads if component in ("k", "v") else cfg.n_heads
        sizes = {"layer": cfg.n_layers, "pos": task.n_pos, "head": n_heads, "kv_head": n_heads,
                 "dest_pos": task.n_pos, "src_pos": task.n_pos}
        values = torch.full([sizes[a] for a in axes], float("nan"))
        m_base = m_corrupt if direction == "denoise" else m_clean
        jobs = []
        for layer in layers:
            for group in _by_position(_variants(component, per_position, n_heads, task.n_pos)):
                live = [v for v in group if not _is_noop(component, base, src, layer, v)]
                for v in group:
                    if v not in live:  # the patched run is the base run itself
                        values[(layer, *v.index)] = m_base.cpu()
                jobs += [(layer, live[i:i + chunk]) for i in range(0, len(live), chunk)]
        for layer, variants in tqdm(share_of(jobs, shard), desc=f"patch {component}", disable=not progress):
            p0 = min(min(v.pos if v.pos is not None else 0 for v in variants), int(task.answer_pos.min()))
            site, x = _patched_residual(engine, component, base, src, layer, variants, p0)
            final = engine.suffix(base, layer, site, x, p0, task.answer_pos)
            metric = _metric(engine, final, task).mean(dim=1).cpu()
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


def share_of(jobs: list, shard: tuple[int, int] | None) -> list:
    """The jobs of one shard `(rank, world_size)` (every world_size-th, from rank), or all of them."""
    if shard is None:
        return jobs
    rank, world = shard
    if not (isinstance(rank, int) and isinstance(world, int) and world >= 1 and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return jobs[rank::world]


def check_run(model: HookedModel, task: Task, direction: str) -> None:
    """Checks every patching method shares: the task, its tokens and answers for this model,
    the direction."""
    if not isinstance(task, Task):
        raise TypeError(f"task must be an interp.patching.Task, got {type(task).__name__}")
    model._tokens(task.clean), model._tokens(task.corrupt)  # vocabulary / context checks
    for label in ("answer", "wrong"):
        ids = getattr(task, label)
        bad = ids[(ids < 0) | (ids >= model.cfg.d_vocab)]
        if len(bad):
            raise ValueError(f"Task.{label} holds token ids outside this model's vocabulary [0, "
                             f"{model.cfg.d_vocab - 1}]: {bad.tolist()}")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def check_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    """All layers when None; otherwise a non-empty list of valid layer indices."""
    if layers is None:
        return list(range(n_layers))
    layers = list(layers)
    if not layers:
        raise ValueError(f"layers must name at least one layer (0..{n_layers - 1}); None means all of them")
    layers = [check_layer(layer, n_layers) for layer in layers]
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct, got {layers}")
    return layers


def check_normalizable(normalize: bool, m_clean: torch.Tensor, m_corrupt: torch.Tensor) -> None:
    """Normalising divides by m_clean - m_corrupt: refuse when that is (numerically) zero."""
    gap = float((m_clean - m_corrupt).abs())
    if normalize and not gap > 1e-6 * max(1.0, float(m_clean.abs()), float(m_corrupt.abs())):
        raise ValueError(f"cannot normalise: the clean and corrupted runs give the same metric ({float(m_clean):.6g} "
                         f"and {float(m_corrupt):.6g}), so every patch would be 0/0. The corruption does not change "
                         f"the behaviour this metric measures; pick other prompts, or pass normalize=False")


def check_sweep(model: HookedModel, task: Task, component: str, per_position: bool | str, direction: str) -> tuple[str, ...]:
    """Validate a sweep's arguments (exact or attribution); return the result's axes."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known components: {', '.join(COMPONENTS)}")
    if per_position == "dest_src" and component != "pattern":
        raise ValueError("per_position='dest_src' applies to component='pattern' only")
    if not (isinstance(per_position, bool) or per_position == "dest_src"):
        raise ValueError(f"per_position must be True, False or 'dest_src', got {per_position!r}")
    check_run(model, task, direction)
    if per_position == "dest_src":
        return ("layer", "head", "dest_pos", "src_pos")
    axes = COMPONENTS[component][2 if per_position else 1]
    if component in ("k", "v") and model.cfg.n_kv_heads != model.cfg.n_heads:
        axes = tuple("kv_head" if a == "head" else a for a in axes)
    return axes


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


def _patched_residual(engine: Engine, component: str, base: RunCache, src: RunCache, layer: int,
                      variants: list[Variant], p0: int) -> tuple[str, torch.Tensor]:
    """The residual stream `[N, B, pos - p0, d_model]` of each patched run, and where it
    stands: "pre" (entering block `layer`) or "post" (leaving it)."""
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

    pre = base.resid_pre[layer][:, p0:]
    if component == "resid_pre":
        return "pre", replace(stacked(base.resid_pre[layer]), src.resid_pre[layer])
    if component == "resid_mid":
        mid = replace(stacked(base.resid_mid[layer]), src.resid_mid[layer])
        return "post", mid + engine.mlp_where_changed(layer, mid, *mlp_rows(base, layer, p0))
    if component == "mlp_in":
        mlp_in = replace(stacked(base.mlp_in[layer]), src.mlp_in[layer])
        mlp_out = engine.mlp_where_changed(layer, mlp_in, *mlp_rows(base, layer, p0))
        return "post", pre + base.attn_out[layer][:, p0:] + mlp_out
    if component == "mlp_out":
        mlp_out = replace(stacked(base.mlp_out[layer]), src.mlp_out[layer])
        return "post", pre + base.attn_out[layer][:, p0:] + mlp_out
    if component == "attn_out":
        attn = replace(stacked(base.attn_out[layer]), src.attn_out[layer])
        return "post", engine.block_output(layer, pre, attn, mlp_rows(base, layer, p0), into="resid")
    return "post", engine.block_output(layer, pre, _patched_attention(engine, component, base, src, layer, variants, p0),
                                       mlp_rows(base, layer, p0), into="resid")


def _patched_attention(engine: Engine, component: str, base: RunCache, src: RunCache, layer: int,
                       variants: list[Variant], p0: int) -> torch.Tensor:
    """The attention output `[N, B, pos - p0, d_model]` after each head-level patch."""
    n, cfg = len(variants), engine.cfg
    group = cfg.n_heads // cfg.n_kv_heads
    z = base.z[layer][:, p0:].unsqueeze(0).repeat(n, 1, 1, 1, 1)  # [N, B, pos - p0, head, d_head]
    idx = torch.arange(n)
    heads = torch.tensor([v.head for v in variants])
    positions = torch.arange(p0, z.shape[2] + p0, device=z.device)
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
        values = base.v[layer][:, :, heads // group].permute(2, 0, 1, 3)  # [N, B, k, d_head]
        z[idx, :, :, heads] = torch.matmul(pattern[:, :, p0:], values)
    elif component == "q":  # recompute the patched query head's attention
        q, k, v_ = (getattr(base, name)[layer] for name in "qkv")
        q = q[:, :, heads].permute(2, 0, 1, 3).clone()  # [N, B, pos, d_head]
        for i, v in enumerate(variants):
            rows = slice(None) if v.pos is None else v.pos
            q[i, :, rows] = src.q[layer][:, rows, v.head]
        k_h, v_h = (t[:, :, heads // group].permute(2, 0, 1, 3) for t in (k, v_))
        head_z, _ = engine.f.attend(layer, q[:, :, p0:, None], k_h[:, :, :, None], v_h[:, :, :, None], positions)
        z[idx, :, :, heads] = head_z[:, :, :, 0]
    else:  # k or v of a key/value head: recompute the attention of every query head reading it
        q, k, v_ = (getattr(base, name)[layer] for name in "qkv")
        patched = {"k": k, "v": v_}[component][:, :, heads].permute(2, 0, 1, 3).clone()  # [N, B, pos, d_head]
        for i, v in enumerate(variants):
            rows = slice(None) if v.pos is None else v.pos
            patched[i, :, rows] = getattr(src, component)[layer][:, rows, v.head]
        readers = heads[:, None] * group + torch.arange(group)  # [N, group] query heads
        q_g = q[:, p0:].permute(2, 0, 1, 3)[readers].permute(0, 2, 3, 1, 4)  # [N, B, pos - p0, group, d_head]
        other = {"k": v_, "v": k}[component][:, :, heads].permute(2, 0, 1, 3)
        k_h, v_h = (patched, other) if component == "k" else (other, patched)
        group_z, _ = engine.f.attend(layer, q_g, k_h[:, :, :, None], v_h[:, :, :, None], positions)
        for g in range(group):
            z[idx, :, :, readers[:, g]] = group_z[:, :, :, g]
    return engine.attn_out_where_changed(layer, z, base, p0)


def _final(engine: Engine, run: RunCache, task: Task) -> torch.Tensor:
    rows = torch.arange(task.batch, device=task.clean.device)
    return engine.f.final(run.resid_post[-1][rows, task.answer_pos])[None]


def _metric(engine: Engine, final: torch.Tensor, task: Task) -> torch.Tensor:
    """The task metric `[N, B]` in fp32 from final-normed residuals `[N, B, d_model]`."""
    final = final.float()
    if task.metric == "logit_diff":  # two columns of W_U are all it reads
        return engine.f.unembed(final, task.answer) - engine.f.unembed(final, task.wrong)
    logits = engine.f.unembed(final)
    out = task.metric_fn()(logits, task)
    if not isinstance(out, torch.Tensor) or out.shape != final.shape[:2]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the task metric must return one number per prompt: shape {tuple(final.shape[:2])} for "
                         f"logits of shape {tuple(logits.shape)}, got {shape}")
    if not torch.isfinite(out).all():
        raise ValueError(f"the task metric returned non-finite values (NaN or inf): "
                         f"{int((~torch.isfinite(out)).sum())} of {out.numel()} (variant, prompt) values; a metric "
                         f"must give a finite number for every prompt")
    return out.float()


def _bytes_per_variant(model: HookedModel, task: Task) -> int:
    """Peak extra memory of one patched run (one variant, every prompt), in bytes. The two
    cached runs (clean and corrupted) come on top and are not part of the budget."""
    c = model.cfg
    elem = torch.finfo(model.dtype).bits // 8
    # Activations alive at once in a suffix run; the MLP's hidden layer and its activation
    # function's temporaries dominate (a budget from the smaller 8*d + 2*d_mlp was overrun 2x).
    hidden = 7 if model.arch.mlp == "gated" else 5
    per_token = 10 * c.d_model + hidden * c.d_mlp + 3 * c.n_heads * task.n_pos
    logits = 0 if task.metric == "logit_diff" else 4 * c.d_vocab
    return task.batch * (elem * task.n_pos * per_token + logits)


def _chunk(device: torch.device, memory_budget: int | None, per_variant: int, unit: str = "one patched forward") -> int:
    """How many variants of `per_variant` bytes run together within `memory_budget` (default:
    `_default_budget`); a budget smaller than one `unit` is refused."""
    budget = _default_budget(device) if memory_budget is None else int(memory_budget)
    if budget < per_variant:
        raise ValueError(f"memory_budget of {budget:,} bytes is smaller than {unit}, which "
                         f"needs about {per_variant:,} bytes for this model and task")
    return max(1, budget // per_variant)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        free = 4 << 30
    return min(1 << 30, free // 4)
