"""Sparse attention decomposition (Franco & Crovella, 2024): circuits from weights plus one
forward pass.

A head's attention score between query i and key j is a bilinear form of the normalised
residual vectors, augmented with a 1 for the biases (x~ = [n(x); 1], n the norm without its
own scale and bias, which the processed weights carry):

    s_ij = x~_i^T Omega~ x~_j = sum_k sigma_k (x~_i . u_k)(x~_j . v_k),
    Omega~ = [W_Q; b_Q] R [W_K; b_K]^T

(R the rotary rotation between the two positions, identity for learned positions). A few
singular directions k carry each large score. The residual at i is a sum of upstream senders'
outputs, so each sender's share of the query side is sum_{k in K} sigma_k (n(a_u,i) . u_k)
(x~_j . v_k), and likewise for the key side: these are the sender's edge scores into the
head's q and k inputs. Heads with large shares are traced in turn, from the heads that write
most to the logit difference at the answer (their direct logit attribution, which also scores
the edges into the logits) back to the input.

Only q, k and logits edges are scored (the method says nothing about values and MLP inputs);
the others are NaN.
"""

from __future__ import annotations

import torch

from interp.models import HookedModel
from interp.patching import Task
from interp.patching.edges import EdgeLayout, check_edge_model, sender_outputs


def _normalise(model: HookedModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """n(x) without the norm's affine part, and the per-vector scale it divided by (so that
    contributions c normalise as (c - mean c) / scale for LayerNorm, c / scale for RMSNorm)."""
    eps = model.arch.norm_eps
    if model.arch.norm == "layernorm":
        centred = x - x.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        return centred / scale, scale
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale, scale


def _part(model: HookedModel, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return ((c - c.mean(-1, keepdim=True)) if model.arch.norm == "layernorm" else c) / scale


class _Forms:
    """Singular decompositions of each head's augmented QK form, cached per relative offset."""

    def __init__(self, model: HookedModel):
        self.model = model
        self._cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        f = model.functional()
        self.rotary = f.rotary(torch.arange(model.cfg.n_ctx, device=model.device)) if model.arch.rotary_dim else None

    def _rotation(self, offset: int) -> torch.Tensor | None:
        """R with q_i . k_j = (q R) . k for keys `offset` positions after the query, both
        unrotated: rotary maps are per-position linear maps M_p (rotated = x @ M_p), and
        M_i M_j^T depends only on j - i."""
        if self.rotary is None:
            return None
        eye = torch.eye(self.model.cfg.d_head, dtype=torch.float64)[:, None]  # d_head rows, one head

        def matrix(position: int) -> torch.Tensor:
            cos, sin = (t[position:position + 1].double() for t in self.rotary)
            return self.model.functional()._rotate(eye, cos, sin)[:, 0]
        first = max(0, -offset)
        return matrix(first) @ matrix(first + offset).T

    def svd(self, layer: int, head: int, offset: int):
        key = (layer, head, offset if self.rotary is not None else 0)
        if key not in self._cache:
            m = self.model
            a = torch.cat([m.W_Q(layer, head, processed=True), m.b_Q(layer, head, processed=True)[None]]).double()
            b = torch.cat([m.W_K(layer, head, processed=True), m.b_K(layer, head, processed=True)[None]]).double()
            rotation = self._rotation(offset)
            if rotation is not None:  # x_i A R B^T x_j = x_i A (B R^T)^T x_j
                b = b @ rotation.T
            qa, ra = torch.linalg.qr(a)
            qb, rb = torch.linalg.qr(b)
            u, s, vh = torch.linalg.svd(ra @ rb.T)
            self._cache[key] = (qa @ u, s * m.arch.attn_scale[layer], qb @ vh.T)
        return self._cache[key]


def score_shares(model: HookedModel, forms: "_Forms", outs: torch.Tensor, x_tilde: torch.Tensor, scale: torch.Tensor,
                 layer: int, head: int, i: int, j: int, coverage: float = 1.0):
    """One attention score's decomposition: the score s_ij of query head (layer, head) from
    query position i to key j (pre-softmax, scaled), and each sender's share of it through the
    query side and through the key side, `[n_senders]` each, using the fewest singular
    directions whose terms reach `coverage` of s_ij (all of them at 1.0, where the shares plus
    the biases' share add up to s_ij). `outs [n_senders, pos, d]` are the senders' outputs,
    `x_tilde [pos, d + 1]` the augmented normalised residual and `scale [pos, 1]` the norm's
    divisor at each position."""
    u, sigma, v = forms.svd(layer, head, j - i)
    terms = sigma * (x_tilde[i] @ u) * (x_tilde[j] @ v)
    total = terms.sum()
    sign = torch.sign(total) if total != 0 else torch.ones((), dtype=total.dtype)
    ranked = torch.argsort(terms * sign, descending=True)
    count = len(terms) if coverage >= 1 else int(((terms[ranked] * sign).cumsum(0) < coverage * total.abs()).sum()) + 1
    k_set = ranked[:count]
    parts_i, parts_j = _part(model, outs[:, i], scale[i]), _part(model, outs[:, j], scale[j])
    q_share = ((parts_i @ u[:-1, k_set]) * (sigma[k_set] * (x_tilde[j] @ v[:, k_set]))).sum(-1)
    k_share = ((parts_j @ v[:-1, k_set]) * (sigma[k_set] * (x_tilde[i] @ u[:, k_set]))).sum(-1)
    return total, q_share, k_share


def sad_scores(model: HookedModel, task: Task, start: float = 0.1, attention: float = 0.9, coverage: float = 0.9,
               share: float = 0.1, max_depth: int | None = None) -> tuple[EdgeLayout, torch.Tensor]:
    """Edge scores `[n_senders, n_receivers]` traced by sparse attention decomposition.

    Args:
        start: trace from every head whose mean |direct logit attribution| is at least this
            share of the largest head's.
        attention: at each traced (head, query), the keys covering this share of the attention.
        coverage: singular directions are kept, largest terms first, until they reach this
            share of the score.
        share: an upstream head whose share of a traced score is at least this (relative) is
            traced in turn, at the query position for query-side shares and the key position
            for key-side shares.
        max_depth: stop tracing after this many hops (default: down to layer 0).
    """
    for name, value in (("start", start), ("attention", attention), ("coverage", coverage), ("share", share)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    engine = check_edge_model(model)
    layout = EdgeLayout.for_model(model)
    task = task.to(model.device)
    forms = _Forms(model)
    with torch.no_grad():
        run = engine.run(task.clean)
        outs = sender_outputs(engine, run).double()  # [S, B, pos, d]
    scores = torch.zeros(layout.exists.shape, dtype=torch.float64)
    B = task.batch
    rows = torch.arange(B)

    # direct logit attribution: each sender's write along the logit-difference direction at the answer
    final_in = run.resid_post[-1][rows, task.answer_pos].double()
    _, final_scale = _normalise(model, final_in)
    w_u = model.weights.w_u.double() * (model.weights.final_norm.weight.double() + model.arch.norm_offset)
    direction = w_u[task.answer] - w_u[task.wrong]  # [B, d]
    dla = torch.stack([(_part(model, outs[s][rows, task.answer_pos], final_scale) * direction).sum(-1)
                       for s in range(len(layout.senders))])  # [S, B]
    logits = len(layout.receivers) - 1
    scores[:, logits] = dla.mean(1)
    heads = [s for s, name in enumerate(layout.senders) if name.startswith("a")]
    strength = {s: float(dla[s].abs().mean()) for s in heads}
    first = [s for s in heads if strength[s] >= start * max(strength.values())]

    def head_of(s: int) -> tuple[int, int]:
        layer, head = layout.senders[s][1:].split(".h")
        return int(layer), int(head)

    frontier = {(s, b, int(task.answer_pos[b]), 0) for s in first for b in range(B)}
    done: set = set()
    while frontier:
        s, b, i, depth = frontier.pop()
        if (s, b, i) in done:
            continue
        done.add((s, b, i))
        layer, head = head_of(s)
        x = run.resid_pre[layer][b].double()  # [pos, d]
        x_tilde, scale = _normalise(model, x)
        x_tilde = torch.cat([x_tilde, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        pattern = run.pattern[layer][b, head, i, : i + 1].double()
        order = torch.argsort(pattern, descending=True)
        keys = order[: int((pattern[order].cumsum(0) < attention).sum()) + 1].tolist()
        upstream = layout.exists[:, layout.receivers.index(f"a{layer}.h{head}<q>")].nonzero()[:, 0]
        q_r, k_r = (layout.receivers.index(f"a{layer}.h{head}<{kind}>") for kind in "qk")
        for j in keys:
            total, q_share, k_share = score_shares(model, forms, outs[upstream, b], x_tilde, scale, layer, head, i, j,
                                                   coverage)
            weight = float(pattern[j]) / B
            scores[upstream, q_r] += weight * q_share
            scores[upstream, k_r] += weight * k_share
            if max_depth is not None and depth >= max_depth:
                continue
            for shares, position in ((q_share, i), (k_share, j)):
                for idx in (shares.abs() >= share * total.abs()).nonzero()[:, 0].tolist():
                    sender = int(upstream[idx])
                    if layout.senders[sender].startswith("a"):
                        frontier.add((sender, b, position, depth + 1))
    out = scores.float()
    scored = torch.zeros_like(layout.exists)
    scored[:, logits] = True
    for name in ("q", "k"):
        scored |= torch.tensor([r.endswith(f"<{name}>") for r in layout.receivers])[None, :]
    out[~(layout.exists & scored)] = float("nan")
    return layout, out
