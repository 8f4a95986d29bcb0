"""Edges: the model as a graph of senders writing into receivers' inputs, and the engine's
edge-level runs (exact edge patching, receiver gradients for EAP/EAP-IG, masked runs for
ACDC and circuit evaluation).

The residual stream entering a block is the sum of everything written before it: the
embeddings (`input`), each earlier head's output `z_h W_O[h]` (`a{l}.h{h}`), each earlier
MLP's output (`m{l}`), plus constant biases (b_O), which are the same in every run and belong
to no node. A head reads that sum three times, once per input (`<q>`, `<k>`, `<v>`), an MLP
once, the logits once. An *edge* u -> r is one sender's term in one receiver's input;
patching it gives the receiver `in_r + (a_u^corr - a_u^clean)` and recomputes everything
downstream (docs/methods.md §5). Under grouped-query attention each query head has its own k
and v inputs (the key/value projection is shared, the input is not), as in EAP-IG's
ungrouped graphs.

Names follow EAP-IG and MIB: senders `input`, `a{l}.h{h}`, `m{l}`; receivers `a{l}.h{h}<q>`,
`<k>`, `<v>`, `m{l}`, `logits`; edges `sender->receiver`. Models whose attention output passes
through a norm before the residual stream (Gemma2's sandwich norms) are refused: their heads'
outputs are not terms of a sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..models import HookedModel
from .engine import Engine, RunCache
from .sweep import _bytes_per_variant, _chunk, _final, _metric, check_run, share_of
from .task import Task


@dataclass(frozen=True)
class EdgeLayout:
    """Senders and receivers of a model's edge graph in canonical order (EAP-IG's tensor
    order), and which pairs are edges. Senders: `input`, then per layer its heads and its MLP.
    Receivers: per layer every head's q input, then every head's k, then every head's v, then
    the MLP; `logits` last. `exists[s, r]` is True when sender s is upstream of receiver r."""

    n_layers: int
    n_heads: int
    parallel: bool
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    sender_layer: tuple[int, ...]       # -1 for input
    receiver_layer: tuple[int, ...]     # n_layers for logits
    exists: torch.Tensor                # [n_senders, n_receivers] bool

    @classmethod
    def build(cls, n_layers: int, n_heads: int, parallel: bool) -> "EdgeLayout":
        senders, s_layer = ["input"], [-1]
        receivers, r_layer = [], []
        for layer in range(n_layers):
            for head in range(n_heads):
                senders.append(f"a{layer}.h{head}")
                s_layer.append(layer)
            for kind in "qkv":
                for head in range(n_heads):
                    receivers.append(f"a{layer}.h{head}<{kind}>")
                    r_layer.append(layer)
            senders.append(f"m{layer}")
            s_layer.append(layer)
            receivers.append(f"m{layer}")
            r_layer.append(layer)
        receivers.append("logits")
        r_layer.append(n_layers)
        s_l, r_l = torch.tensor(s_layer)[:, None], torch.tensor(r_layer)[None, :]
        is_head_sender = torch.tensor([name.startswith("a") for name in senders])[:, None]
        is_mlp_receiver = torch.tensor([name.startswith("m") for name in receivers])[None, :]
        same_layer_ok = is_head_sender & is_mlp_receiver & (s_l == r_l) & (not parallel)
        exists = (s_l < r_l) | same_layer_ok
        return cls(n_layers, n_heads, parallel, tuple(senders), tuple(receivers), tuple(s_layer), tuple(r_layer), exists)

    @classmethod
    def for_model(cls, model: HookedModel) -> "EdgeLayout":
        return cls.build(model.cfg.n_layers, model.cfg.n_heads, model.cfg.parallel)

    @property
    def n_edges(self) -> int:
        return int(self.exists.sum())

    def receivers_of_layer(self, layer: int) -> list[int]:
        return [i for i, l in enumerate(self.receiver_layer) if l == layer]

    def sender(self, layer: int, head: int | None = None) -> int:
        """The sender index of a head of `layer` (its MLP with `head` None)."""
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if head is None else head)

    def receiver(self, layer: int, kind: str, head: int = 0) -> int:
        """The receiver index of a head's "q", "k" or "v" input, or of the "mlp", in `layer`."""
        H = self.n_heads
        return layer * (3 * H + 1) + (3 * H if kind == "mlp" else "qkv".index(kind) * H + head)

    def kind(self, r: int) -> str:
        """Receiver r's kind: "q", "k", "v", "mlp" or "logits"."""
        layer, H = self.receiver_layer[r], self.n_heads
        if layer == self.n_layers:
            return "logits"
        local = r - layer * (3 * H + 1)
        return "mlp" if local == 3 * H else "qkv"[local // H]

    def node(self, r: int) -> int | None:
        """The sender index of receiver r's node (None for the logits)."""
        layer, kind = self.receiver_layer[r], self.kind(r)
        if kind == "logits":
            return None
        return self.sender(layer, None if kind == "mlp" else (r - layer * (3 * self.n_heads + 1)) % self.n_heads)


def check_edge_model(model: HookedModel) -> Engine:
    """The engine for edge-level methods, or a clear refusal."""
    engine = Engine(model)
    if model.arch.block == "sandwich":
        raise ValueError(f"edge-level methods need each head's output to be a term of the residual stream; "
                         f"{model.cfg.name} ({model.cfg.family}) normalises the attention output before adding it "
                         f"(post-attention norm), so heads' outputs do not add up. Use node-level patching "
                         f"(interp.patching.patch) on this model")
    return engine


def head_outputs(engine: Engine, layer: int, z: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
    """Each head's output z W_O[h] (no b_O) `[..., len(heads), B, P, d_model]` from its z
    `[..., B, P, len(heads), d_head]` (`heads`: which query heads of `layer`; all by default)."""
    cfg = engine.cfg
    w_o = engine.f.weights.layers[layer].w_o.view(cfg.d_model, cfg.n_heads, cfg.d_head)
    return torch.einsum("...bphe,dhe->...hbpd", z, w_o if heads is None else w_o[:, heads])


def sender_outputs(engine: Engine, run: RunCache) -> torch.Tensor:
    """Every sender's output `[n_senders, B, pos, d_model]` in canonical order: the
    embeddings, then per layer each head's z W_O[h] (no b_O) and the MLP's output."""
    outs = [run.resid_pre[0]]
    for layer in range(engine.cfg.n_layers):
        outs.extend(head_outputs(engine, layer, run.z[layer]))
        outs.append(run.mlp_out[layer])
    return torch.stack(outs)


def first_change(delta: torch.Tensor) -> int:
    """The first position (axis -2) where `delta [..., pos, d]` is not exactly zero (its last
    position when it is zero everywhere)."""
    changed = (delta != 0).flatten(0, -3).any(0).any(-1)
    return int(changed.nonzero()[0]) if changed.any() else delta.shape[-2] - 1


def edge_patch(model: HookedModel, task: Task, memory_budget: int | None = None, progress: bool = True,
               shard: tuple[int, int] | None = None) -> tuple[EdgeLayout, torch.Tensor, float, float]:
    """Exact edge patching: for every edge u -> r, the change of the task metric (averaged over
    prompts) when only that edge carries the corrupted sender output into the clean run,
    `m(clean, in_r += a_u^corr - a_u^clean) - m(clean)`, everything downstream recomputed.

    Returns `(layout, scores [n_senders, n_receivers], m_clean, m_corrupt)`; scores are NaN where
    there is no edge. The edges into one layer's receivers run batched (variants on a leading
    axis, chunked to `memory_budget`), from that layer on and from the first position where
    the prompts differ. `shard=(rank, world_size)` computes only that share of the batched
    runs (the logits edges in every share), leaving the rest NaN.
    """
    engine, task, clean, _, delta, m_clean, m_corrupt = _clean_and_corrupt(model, task)
    layout = EdgeLayout.for_model(model)
    cfg, f = model.cfg, engine.f
    with engine.sweeping():
        p0 = min(first_change(delta), int(task.answer_pos.min()))
        scores = torch.full(layout.exists.shape, float("nan"))
        rows = torch.arange(task.batch, device=delta.device)

        # logits: the final residual gets the sender's difference; nothing runs
        logits = len(layout.receivers) - 1
        final = f.final(clean.resid_post[-1][rows, task.answer_pos] + delta[:, rows, task.answer_pos])
        scores[:, logits] = (_metric(engine, final, task).mean(1) - m_clean).cpu()

        per_variant = _bytes_per_variant(model, task)
        chunk = _chunk(model.device, memory_budget, per_variant)
        jobs = []
        for layer in range(cfg.n_layers):
            for r in layout.receivers_of_layer(layer):
                senders = layout.exists[:, r].nonzero()[:, 0].tolist()
                jobs += [(layer, r, senders[i:i + chunk]) for i in range(0, len(senders), chunk)]
        for layer, r, senders in tqdm(share_of(jobs, shard), desc="edge patching", disable=not progress):
            if layer == cfg.n_layers - 1:  # the metric reads the answer positions alone
                final = f.final(_patched_receiver(engine, layout, clean, delta, layer, r, senders, p0,
                                                  task.answer_pos)[:, :, 0])
            else:
                x = _patched_receiver(engine, layout, clean, delta, layer, r, senders, p0)
                final = engine.suffix(clean, layer, "post", x, p0, task.answer_pos)
            scores[senders, r] = (_metric(engine, final, task).mean(1) - m_clean).cpu()
    return layout, scores, m_clean, m_corrupt


def _patched_receiver(engine: Engine, layout: EdgeLayout, base: RunCache, delta: torch.Tensor, layer: int,
                      receiver: int, senders: list[int], p0: int, answer_pos: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """The residual leaving block `layer` `[N, B, P, d_model]` when receiver `receiver` (of this
    layer) reads `in + delta[s]`, one variant per sender s: at positions p0.. (P = pos - p0), or
    at each prompt's `answer_pos [B]` alone (P = 1) when given, for the last layer, whose other
    positions no metric reads. Only the receiver's head is recomputed; the block's other heads
    keep the base run's output."""
    batch = torch.arange(base.resid_pre[0].shape[0], device=delta.device)

    def rows(t: torch.Tensor) -> torch.Tensor:  # [B, pos, ...] -> [B, P, ...]
        return t[:, p0:] if answer_pos is None else t[batch, answer_pos].unsqueeze(1)

    every_row = base.resid_pre[layer][:, p0:]  # [B, pos - p0, d]: what keys and values read
    pre, d_all = rows(base.resid_pre[layer]), delta[senders][:, :, p0:]  # [B, P, d], [N, B, pos - p0, d]
    d = d_all if answer_pos is None else d_all[:, batch, answer_pos - p0].unsqueeze(2)  # [N, B, P, d]
    base_mlp = rows(base.mlp_in[layer]), rows(base.mlp_out[layer])
    name = layout.receivers[receiver]
    if name.startswith("m"):
        return pre + rows(base.attn_out[layer]) + engine.mlp_where_changed(layer, base_mlp[0] + d, *base_mlp)
    head, kind = int(name.split(".h")[1].split("<")[0]), name[-2]
    heads = torch.tensor([head], device=delta.device)
    # each input [..., 1 head, B, rows, d]: the query's at the P rows, the key's and value's at every row
    inputs = {"q": pre[None, None], "k": every_row[None, None], "v": every_row[None, None]}
    inputs[kind] = (pre + d if kind == "q" else every_row + d_all).unsqueeze(1)
    z = attend_heads(engine, base, layer, heads, inputs["q"], inputs["k"], inputs["v"], p0, answer_pos)
    change = head_outputs(engine, layer, z - rows(base.z[layer])[:, :, head:head + 1], heads)[:, 0]  # [N, B, P, d]
    return engine.block_output(layer, pre, rows(base.attn_out[layer]) + change, base_mlp, into="resid")


# ------------------------------------------------------------------ gradients (EAP, EAP-IG)

def _split_forward(engine: Engine, x: torch.Tensor, task: Task, replace: tuple[str, int, torch.Tensor] | None = None,
                   keep: RunCache | None = None):
    """A forward pass in which every receiver reads its own copy of its input, so that the
    gradient of the metric with respect to each copy is that receiver's input gradient.

    x: the residual entering layer 0, `[N, B, pos, d_model]`. `replace` = (kind, layer, value)
    substitutes one sender group's output along the way ("attn" or "mlp" of a layer, `value`
    broadcastable to `[N, B, pos, d_model]`). Returns the metric `[N, B]` and the receivers'
    input copies in canonical order, as tensors with gradients retained: per layer one
    `[3 * n_heads, N, B, pos, d_model]` tensor (every head's q input, then k, then v) and the
    MLP's `[N, B, pos, d_model]`; then the logits' input.

    `keep` (for N = 1): a `RunCache` that receives this run's `resid_pre[0]`, `z`, `mlp_out` and
    last `resid_post`, detached, so that a clean run need not be computed twice.
    """
    f, cfg = engine.f, engine.cfg
    if keep is not None:
        keep.resid_pre.append(x[0].detach())
    x = x.detach().requires_grad_(True)  # the root of the graph whose receiver gradients are read
    n_pos = x.shape[-2]
    positions = torch.arange(n_pos, device=x.device)
    rot = engine.rotary(n_pos, positions)
    copies: list[torch.Tensor] = []
    H = cfg.n_heads
    all_heads = torch.arange(H, device=x.device)
    for layer in range(cfg.n_layers):
        inputs = x.unsqueeze(0).expand(3 * H, *x.shape).clone()  # [3H, N, B, pos, d]: q, k, v inputs of each head
        inputs.retain_grad()
        per_kind = inputs.view(3, H, *x.shape).transpose(1, 2)  # [3, N, H, B, pos, d]
        q, k, v = (project_heads(engine, layer, which, per_kind[i], all_heads) for i, which in enumerate("qkv"))
        if rot is not None:
            q, k = f._rotate(q, *rot), f._rotate(k, *rot)
        z, _ = f.attend(layer, q, k, v, positions)
        attn = f.attn_out(layer, z)
        if replace is not None and replace[:2] == ("attn", layer):
            attn = replace[2].expand_as(attn)
        mlp_in = (x if f.parallel else x + attn).clone()
        mlp_in.retain_grad()
        mlp = f.mlp(layer, mlp_in)
        if replace is not None and replace[:2] == ("mlp", layer):
            mlp = replace[2].expand_as(mlp)
        x = x + attn + mlp
        copies += [inputs, mlp_in]
        if keep is not None:
            keep.z.append(z[0].detach())
            keep.mlp_out.append(mlp[0].detach())
    if keep is not None:
        keep.resid_post.append(x[0].detach())
    final_in = x.clone()
    final_in.retain_grad()
    copies.append(final_in)
    rows = torch.arange(task.batch, device=x.device)
    metric = _metric(engine, f.final(final_in[:, rows, task.answer_pos]), task)
    return metric, copies


def receiver_gradients(engine: Engine, task: Task, x: torch.Tensor,
                       replace: tuple[str, int, torch.Tensor] | None = None,
                       keep: RunCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d(metric, averaged over prompts and summed over the N runs of `x`)/d(each receiver's
    input), `[n_receivers, B, pos, d_model]` summed over N; and the metric `[N, B]`. `keep`: as
    in `_split_forward`."""
    with torch.enable_grad():
        metric, copies = _split_forward(engine, x, task, replace, keep)
        metric.mean(1).sum().backward()
    # a copy no gradient reached (its reader's output was replaced) has gradient zero
    grads = [torch.zeros_like(c) if c.grad is None else c.grad for c in copies]
    grads = [g.sum(1) if g.ndim == 5 else g.sum(0, keepdim=True) for g in grads]
    return metric.detach(), torch.cat(grads)


def _scores_from_gradients(layout: EdgeLayout, delta: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """s(u -> r) = sum over prompts, positions and dims of delta_u . grad_r; NaN off-edges."""
    scores = delta.flatten(1) @ grads.flatten(1).T  # [S, R]
    scores = scores.float().cpu()
    scores[~layout.exists] = float("nan")
    return scores


def _clean_and_corrupt(model: HookedModel, task: Task):
    check_run(model, task, "noise")
    engine = check_edge_model(model)
    task = task.to(model.device)
    with torch.no_grad():
        clean, corrupt = engine.run(task.clean), engine.run(task.corrupt)
    return (engine, task, clean, corrupt, *_compared(engine, task, clean, corrupt))


def _compared(engine: Engine, task: Task, clean: RunCache, corrupt: RunCache) -> tuple[torch.Tensor, float, float]:
    """The parity check on the clean run, then `(delta [n_senders, B, pos, d_model] = corrupted -
    clean sender outputs, m_clean, m_corrupt)`."""
    with torch.no_grad():
        engine.check(task.clean, clean, task.answer_pos)
        m_clean = float(_metric(engine, _final(engine, clean, task), task).mean())
        m_corrupt = float(_metric(engine, _final(engine, corrupt, task), task).mean())
        delta = sender_outputs(engine, corrupt) - sender_outputs(engine, clean)
    return delta, m_clean, m_corrupt


def _refuse_flat(scores: torch.Tensor, m_clean: float, m_corrupt: float, what: str) -> None:
    """Refuse when the first-order scores carry (numerically) nothing of the metric's change
    between the runs: the metric is flat at the clean run."""
    mass = float(torch.nansum(scores.abs()))
    if not mass > 1e-2 * abs(m_corrupt - m_clean):  # first order explains under 1% of the change
        raise ValueError(f"{what} needs a metric with a gradient at the clean run; this task's metric has none "
                         f"there (its scores sum to {mass:.2g} in size against a change of {m_corrupt - m_clean:.3g} "
                         f"between the runs; a divergence from the clean run's own output, such as KL, is flat at "
                         f"the clean run). Use a metric such as the logit difference for gradient methods")


def eap(model: HookedModel, task: Task) -> tuple[EdgeLayout, torch.Tensor, float, float]:
    """Edge attribution patching (Syed et al.): every edge's first-order estimate of
    `edge_patch`, s(u -> r) = sum_{prompt, pos} (a_u^corr - a_u^clean) . d metric / d in_r at the
    clean run, from a clean and a corrupted forward and one backward pass.

    Returns `(layout, scores [n_senders, n_receivers], m_clean, m_corrupt)` like `edge_patch`."""
    check_run(model, task, "noise")
    engine = check_edge_model(model)
    task = task.to(model.device)
    clean = RunCache()  # filled by the gradient pass, which is a clean run too
    with torch.no_grad():
        corrupt = engine.run(task.corrupt)
        x = engine.f.embed(task.clean)
    _, grads = receiver_gradients(engine, task, x.unsqueeze(0), keep=clean)
    delta, m_clean, m_corrupt = _compared(engine, task, clean, corrupt)
    layout = EdgeLayout.for_model(model)
    scores = _scores_from_gradients(layout, delta, grads)
    _refuse_flat(scores, m_clean, m_corrupt, "EAP")
    return layout, scores, m_clean, m_corrupt


def eap_ig(model: HookedModel, task: Task, steps: int = 5, variant: str = "inputs", progress: bool = True
           ) -> tuple[EdgeLayout, torch.Tensor, float, float]:
    """EAP with integrated gradients (Hanna et al., 2024): the gradient in EAP's score is
    averaged over `steps` points on a straight path from the corrupted to the clean run.

    variant "inputs": the input embeddings are interpolated, e = e_corr + (k / steps)(e_clean -
    e_corr) for k = 0 .. steps-1 (as EAP-IG's code does), one backward pass per step.
    variant "activations": for each sender group in turn (the embeddings, each layer's
    attention, each layer's MLP) its output is interpolated, a = a_corr + (k / steps)(a_clean -
    a_corr) for k = 1 .. steps, the rest of the clean run recomputed; the gradients of all
    (2 n_layers + 1) x steps runs are averaged (EAP-IG's `ig_activations`).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if variant not in ("inputs", "activations"):
        raise ValueError(f"variant must be 'inputs' or 'activations', got {variant!r}")
    engine, task, clean, corrupt, delta, m_clean, m_corrupt = _clean_and_corrupt(model, task)
    layout = EdgeLayout.for_model(model)
    e_clean, e_corrupt = clean.resid_pre[0], corrupt.resid_pre[0]
    if variant == "inputs":
        alphas = torch.arange(steps, device=e_clean.device, dtype=e_clean.dtype) / steps
        x = e_corrupt + alphas.view(-1, 1, 1, 1) * (e_clean - e_corrupt)
        _, grads = receiver_gradients(engine, task, x)
        grads = grads / steps
    else:
        alphas = torch.arange(1, steps + 1, device=e_clean.device, dtype=e_clean.dtype).view(-1, 1, 1, 1) / steps
        groups = [("input", -1)] + [(kind, layer) for layer in range(model.cfg.n_layers) for kind in ("attn", "mlp")]
        grads = 0
        for kind, layer in tqdm(groups, desc="EAP-IG activations", disable=not progress):
            if kind == "input":
                _, g = receiver_gradients(engine, task, e_corrupt + alphas * (e_clean - e_corrupt))
            else:
                a_clean, a_corrupt = (getattr(r, f"{kind}_out")[layer] for r in (clean, corrupt))
                value = a_corrupt + alphas * (a_clean - a_corrupt)
                _, g = receiver_gradients(engine, task, e_clean.unsqueeze(0).expand(steps, -1, -1, -1),
                                          replace=(kind, layer, value))
            grads = grads + g
        grads = grads / (len(groups) * steps)
    # A metric flat at the clean run (KL to it) is fine here: the path's gradients are not.
    return layout, _scores_from_gradients(layout, delta, grads), m_clean, m_corrupt


# ------------------------------------------------------------------ masked runs (ACDC, evaluation)

def ablated_outputs(engine: Engine, task: Task, clean: RunCache, corrupt: RunCache, ablation: str) -> torch.Tensor:
    """What a sender outside the circuit writes, `[n_senders, B, pos, d_model]`: its output on the
    corrupted prompts ("patching"), its mean over prompts and positions of the clean run ("mean"),
    or zero ("zero")."""
    if ablation == "patching":
        return sender_outputs(engine, corrupt)
    outs = sender_outputs(engine, clean)
    if ablation == "zero":
        return torch.zeros_like(outs)
    if ablation == "mean":
        return outs.mean(dim=(1, 2), keepdim=True).expand_as(outs)
    raise ValueError(f"ablation must be 'patching', 'mean' or 'zero', got {ablation!r}")


def project_heads(engine: Engine, layer: int, which: str, inputs: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """q, k or v (`which`, before rotary) `[..., B, P, len(heads), d_head]` of query heads `heads`
    of `layer`, each from its own input `[..., len(heads), B, P, d_model]`; k and v through the
    key/value head each query head reads."""
    f, cfg = engine.f, engine.cfg
    w = f.weights.layers[layer]
    count = cfg.n_heads if which == "q" else cfg.n_kv_heads
    weight = getattr(w, f"w_{which}").view(count, cfg.d_head, cfg.d_model)
    bias = getattr(w, f"b_{which}")
    own = heads if which == "q" else engine.kv_of[heads]
    out = torch.einsum("...hbpd,hed->...bphe", f.norm(inputs, w.attn_norm), weight[own])
    return out if bias is None else out + bias.view(count, cfg.d_head)[own]


def attend_heads(engine: Engine, clean: RunCache, layer: int, heads: torch.Tensor, q_in: torch.Tensor,
                 k_in: torch.Tensor, v_in: torch.Tensor, p0: int, answer_pos: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """z `[..., B, Q, len(heads), d_head]` of query heads `heads` of `layer`, each reading its
    own q, k and v inputs `[..., len(heads), B, P, d_model]` (positions p0..; the queries' at
    the `answer_pos [B]` alone, Q = 1, when given). Keys and values before p0 are the `clean`
    run's. The leading axes of the three inputs broadcast (1 where an input does not vary)."""
    f = engine.f
    n_pos = clean.resid_pre[0].shape[1]
    positions = torch.arange(p0, n_pos, device=k_in.device)
    q_pos = positions if answer_pos is None else answer_pos.view(-1, 1)
    q, k, v = (project_heads(engine, layer, which, x, heads) for which, x in zip("qkv", (q_in, k_in, v_in)))
    rot = engine.rotary(n_pos, positions)
    if rot is not None:
        k, q = f._rotate(k, *rot), f._rotate(q, *engine.rotary(n_pos, q_pos))
    kv = engine.kv_of[heads]
    k = engine.with_prefix("keys", clean.k[layer][:, :p0, kv], k)
    v = engine.with_prefix("values", clean.v[layer][:, :p0, kv], v)
    z, _ = f.attend(layer, q, k, v, q_pos)
    return z


def masked_final(engine: Engine, layout: EdgeLayout, clean: RunCache, ablated: torch.Tensor, masks: torch.Tensor,
                 answer_pos: torch.Tensor, start_layer: int = 0, p0: int = 0) -> torch.Tensor:
    """The final-normed residual at the answer positions `[N, B, d_model]` of the model in which
    every receiver reads, for each of its edges, the sender's current output where
    `masks [N, n_senders, n_receivers]` is True and `ablated`'s where it is False.

    Layers before `start_layer` and positions before `p0` must be unaffected by the masks (the
    caller knows: no edge into an earlier layer is off, and `ablated` equals the clean outputs
    at earlier positions); they are read from the `clean` run. The last layer runs its queries,
    attention and MLP at the answer positions only.
    """
    f, cfg = engine.f, engine.cfg
    H, n = cfg.n_heads, masks.shape[0]
    off = (~masks & layout.exists.to(masks.device)).to(ablated.dtype)  # 1 where a receiver reads the ablated output
    clean_out = sender_outputs(engine, clean)[:, :, p0:]
    ablated = ablated[:, :, p0:]
    n_before = layout.sender(start_layer, 0)  # senders upstream of start_layer, in canonical order
    diffs = [(clean_out[:n_before] - ablated[:n_before]).unsqueeze(0).expand(n, -1, -1, -1, -1)]
    x = clean.resid_pre[start_layer][:, p0:].unsqueeze(0).expand(n, -1, -1, -1)

    def corrected(base: torch.Tensor, receivers: list[int]) -> torch.Tensor:
        d = torch.cat(diffs, dim=1)  # [N, S_up, B, P, d]
        correction = torch.einsum("nsr,nsbpd->nrbpd", off[:, : d.shape[1], receivers], d)
        return base.unsqueeze(1) - correction  # [N, R, B, P, d]

    rows, at = torch.arange(x.shape[1], device=x.device), answer_pos - p0
    all_heads = torch.arange(H, device=ablated.device)
    for layer in range(start_layer, cfg.n_layers):
        receivers = layout.receivers_of_layer(layer)  # H query inputs, H key inputs, H value inputs, the MLP
        k_in, v_in = corrected(x, receivers[H:2 * H]), corrected(x, receivers[2 * H:3 * H])
        last = layer == cfg.n_layers - 1  # the logits read only the answer positions: queries and MLP there alone
        if last:
            x = x[:, rows, at].unsqueeze(2)
            diffs = [d[:, :, rows, at].unsqueeze(3) for d in diffs]
        z = attend_heads(engine, clean, layer, all_heads, corrected(x, receivers[:H]), k_in, v_in, p0,
                         answer_pos if last else None)
        head_out = head_outputs(engine, layer, z)
        first_sender = layout.sender(layer, 0)
        ablated_here = ablated[None, first_sender:first_sender + H + 1]
        if last:
            ablated_here = ablated_here[:, :, rows, at].unsqueeze(3)
        diffs.append(head_out - ablated_here[:, :H])
        attn = f.attn_out(layer, z)
        mid = x if f.parallel else x + attn
        mlp_out = f.mlp(layer, corrected(mid, receivers[-1:])[:, 0])
        diffs.append((mlp_out - ablated_here[:, H]).unsqueeze(1))
        x = x + attn + mlp_out
    d = torch.cat(diffs, dim=1)[:, :, :, 0]  # [N, S, B, d]: the answer positions
    final_in = x[:, :, 0] - torch.einsum("ns,nsbd->nbd", off[:, :, -1], d)
    return f.final(final_in)


class CircuitRunner:
    """Runs one model and task with any set of edge masks: the metric or logits of the model in
    which edges outside a mask read ablated senders. Clean and corrupted runs are cached once;
    masks run batched (chunked to `memory_budget`), from a start layer and (for corrupted
    patching) from the first position where the prompts differ.

    ablation: "patching" (senders' outputs on the corrupted prompts), "mean" (their mean over
    the task's prompts and positions) or "zero".
    """

    def __init__(self, model: HookedModel, task: Task, ablation: str = "patching", memory_budget: int | None = None):
        check_run(model, task, "noise")
        self.engine = check_edge_model(model)
        self.layout = EdgeLayout.for_model(model)
        self.task = task = task.to(model.device)
        engine = self.engine
        with torch.no_grad():
            self.clean, self.corrupt = engine.run(task.clean), engine.run(task.corrupt)
            engine.check(task.clean, self.clean, task.answer_pos)
            self.m_clean = float(_metric(engine, _final(engine, self.clean, task), task).mean())
            self.m_corrupt = float(_metric(engine, _final(engine, self.corrupt, task), task).mean())
            self.ablated = ablated_outputs(engine, task, self.clean, self.corrupt, ablation)
            self.clean_logits = engine.f.unembed(_final(engine, self.clean, task)[0]).float()  # [B, V]
            clean_out = sender_outputs(engine, self.clean)
        self.p0 = min(first_change(clean_out - self.ablated), int(task.answer_pos.min()))
        cfg = model.cfg
        elem = torch.finfo(model.dtype).bits // 8
        per_token = (len(self.layout.senders) + 8 * cfg.n_heads + 12) * cfg.d_model + 7 * cfg.d_mlp
        per_variant = task.batch * elem * (task.n_pos - self.p0) * per_token + task.batch * 4 * cfg.d_vocab
        self.chunk = _chunk(model.device, memory_budget, per_variant, "one masked run")

    def final(self, masks: torch.Tensor, start_layer: int = 0) -> torch.Tensor:
        """The final-normed residual at the answer positions `[N, B, d_model]` of each mask
        `[N, n_senders, n_receivers]`, run from `start_layer` (no earlier edge may be off)."""
        if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(self.layout.exists.shape):
            raise ValueError(f"masks must have shape [N, {len(self.layout.senders)}, {len(self.layout.receivers)}] "
                             f"(variants, senders, receivers), got {tuple(masks.shape)}")
        start = min(start_layer, self.engine.cfg.n_layers - 1)
        masks = masks.to(self.ablated.device)
        with self.engine.sweeping():
            return torch.cat([masked_final(self.engine, self.layout, self.clean, self.ablated, masks[i:i + self.chunk],
                                           self.task.answer_pos, start, self.p0)
                              for i in range(0, len(masks), self.chunk)])

    def metric(self, masks: torch.Tensor, start_layer: int = 0) -> torch.Tensor:
        """The task metric per variant and prompt `[N, B]` (fp32)."""
        return self.metric_of(self.final(masks, start_layer))

    def kl(self, masks: torch.Tensor, start_layer: int = 0) -> torch.Tensor:
        """KL(clean model's next-token distribution || masked model's) at each prompt's answer
        position, per variant and prompt `[N, B]` (fp32)."""
        return self.kl_of(self.final(masks, start_layer))

    def metric_of(self, finals: torch.Tensor) -> torch.Tensor:
        """`metric` of final-normed residuals at the answer positions `[N, B, d_model]`."""
        return _metric(self.engine, finals, self.task)

    def kl_of(self, finals: torch.Tensor) -> torch.Tensor:
        """`kl` of final-normed residuals at the answer positions `[N, B, d_model]`."""
        logits = self.engine.f.unembed(finals.float())
        clean = torch.log_softmax(self.clean_logits, -1)
        return (clean.exp() * (clean - torch.log_softmax(logits, -1))).sum(-1)

    def run_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """The task metric `[N, B]` (CPU) of each mask, for `circuits.evaluation`: the earliest
        layer any mask changes is where the runs start."""
        off = ~masks & self.layout.exists
        changed = off.any(0).any(0).nonzero()
        start = min((self.layout.receiver_layer[int(r)] for r in changed), default=self.engine.cfg.n_layers - 1)
        return self.metric(masks, start).cpu()
