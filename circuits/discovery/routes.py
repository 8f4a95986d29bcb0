"""Information-flow routes (Ferrando & Voita, 2024): which parts of each residual update carry
the prediction, from one forward pass and no counterfactual.

A residual update y is a sum of parts z (the residual it starts from, each head's write from
each source token, the MLP's write, the biases). A part's importance is its *proximity* to the
sum, max(||y||_1 - ||y - z||_1, 0), normalised over the parts (docs/methods.md §5).

* `token_routes`: the token-level graph of one prompt. Nodes are residual states (layer,
  position, "pre"/"mid"/"post"); an edge is a part whose importance exceeds `threshold`
  (the paper's tool uses 0.04), kept only when it lies on a route back from the prediction.
* `routes_scores`: the same proximities aggregated to the edge graph of `circuits.graph`.
  An edge u -> r scores the sender output's proximity to the receiver's input (normalised over
  the upstream senders, as EAP-IG's implementation of routes does), weighted at each position
  by how much the receiver carries the prediction there: the importance that flows from the
  prediction back through the token-level graph (without a threshold) into that receiver —
  through a head, the share of its write from key j into query i goes to its q input at i and
  its k and v inputs at j. Averaged over the prompts. (EAP-IG averages over every position
  instead, which lets positions unrelated to the prediction dominate.)
"""

from __future__ import annotations

import pandas as pd
import torch

from interp.models import HookedModel
from interp.patching import Task
from interp.patching.edges import EdgeLayout, check_edge_model, sender_outputs


def _proximity(y: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """`y [..., d]`, `parts [n, ..., d]` -> normalised proximities `[n, ...]`."""
    prox = (y.abs().sum(-1) - (y - parts).abs().sum(-1)).clamp(min=0)
    return prox / prox.sum(0, keepdim=True).clamp(min=torch.finfo(prox.dtype).tiny)


def routes_scores(model: HookedModel, task: Task) -> tuple[EdgeLayout, torch.Tensor]:
    """Edge scores `[n_senders, n_receivers]` (NaN off-edges) on the clean prompts of `task`,
    traced back from each prompt's prediction at its answer position (see the module
    docstring)."""
    engine = check_edge_model(model)
    layout = EdgeLayout.for_model(model)
    task = task.to(model.device)
    cfg = model.cfg
    with torch.no_grad():
        run = engine.run(task.clean)
        outs = sender_outputs(engine, run).double()  # [S, B, pos, d]
    scores = torch.zeros(layout.exists.shape, dtype=torch.float64)
    for b in range(task.batch):
        weights = _receiver_weights(engine, run, b, int(task.answer_pos[b]))  # [R, pos]
        for layer in range(cfg.n_layers + 1):
            reads = run.resid_post[-1] if layer == cfg.n_layers else run.resid_pre[layer]
            for r in layout.receivers_of_layer(layer):
                x = run.mlp_in[layer] if layout.receivers[r].startswith("m") else reads
                upstream = layout.exists[:, r].nonzero()[:, 0]
                importance = _proximity(x[b].double(), outs[upstream, b])  # [S_up, pos]
                scores[upstream, r] += (importance * weights[r]).sum(-1) / task.batch
    scores[~layout.exists] = float("nan")
    return layout, scores.float()


def _receiver_weights(engine, run, b: int, target: int) -> torch.Tensor:
    """How much of prompt b's prediction at `target` flows through each receiver at each
    position, `[n_receivers, pos]`, propagated back through every part's proximity."""
    cfg, f = engine.cfg, engine.f
    H, n_pos = cfg.n_heads, run.resid_pre[0].shape[1]
    weights = torch.zeros(cfg.n_layers * (3 * H + 1) + 1, n_pos, dtype=torch.float64)
    weights[-1, target] = 1.0
    post = torch.zeros(n_pos, dtype=torch.float64)
    post[target] = 1.0
    for layer in range(cfg.n_layers - 1, -1, -1):
        base = layer * (3 * H + 1)
        q_r, k_r, v_r, mlp_r = base, base + H, base + 2 * H, base + 3 * H
        w = f.weights.layers[layer]
        pre = run.resid_pre[layer][b].double()
        if not f.parallel:  # post = mid + mlp(mid)
            mid = run.resid_mid[layer][b].double()
            share = _proximity(run.resid_post[layer][b].double(), torch.stack([mid, run.mlp_out[layer][b].double()]))
            weights[mlp_r] = post * share[1]
            post = post * share.sum(0)  # both the residual and the MLP read the mid state
        target_state = run.resid_post[layer][b] if f.parallel else run.resid_mid[layer][b]
        pattern = run.pattern[layer][b].double()  # [head, q, k]
        v = run.v[layer][b][:, [cfg.kv_head(h) for h in range(H)]].double()  # [pos, head, d_head]
        w_o = w.w_o.double().view(cfg.d_model, H, cfg.d_head)
        writes = torch.einsum("hqk,khe,dhe->qhkd", pattern, v, w_o)  # [q, head, k, d]
        parts = [pre[:, None], writes.flatten(1, 2)]
        if w.b_o is not None:
            parts.append(w.b_o.double().expand(n_pos, 1, -1))
        if f.parallel:
            parts.append(run.mlp_out[layer][b].double()[:, None])
        parts = torch.cat(parts, dim=1).transpose(0, 1)  # [n_parts, q, d]
        share = _proximity(target_state.double(), parts)  # [n_parts, q]
        flow = post * share  # importance through each part, per query position
        head_flow = flow[1: 1 + H * n_pos].T.reshape(n_pos, H, n_pos)  # [q, head, k]
        weights[q_r: q_r + H] = head_flow.sum(-1).T  # query side at q
        weights[k_r: k_r + H] = head_flow.sum(0)      # key side at k
        weights[v_r: v_r + H] = head_flow.sum(0)
        new_pre = flow[0] + head_flow.sum((0, 1))
        if f.parallel:
            weights[mlp_r] = flow[-1]
            new_pre = new_pre + flow[-1]  # the MLP reads the block's input
        post = new_pre
    return weights


def token_routes(model: HookedModel, tokens: torch.Tensor, position: int = -1, threshold: float = 0.04) -> pd.DataFrame:
    """The token-level information-flow graph of one prompt `tokens [pos]` (or `[1, pos]`), traced
    back from the residual stream at `position` after the last layer.

    Returns one row per edge: `layer`, `from_pos`, `from_state`, `to_pos`, `to_state` (residual
    states "pre", "mid", "post" of `layer`), `via` ("residual", "mlp", or "head"), `head`
    (-1 unless via a head) and `importance`. Parts whose importance is at most `threshold`
    are dropped, and so is everything no kept route connects to the prediction.
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    engine = check_edge_model(model)
    tokens = model._tokens(tokens)
    if tokens.shape[0] != 1:
        raise ValueError(f"token_routes traces one prompt; got a batch of {tokens.shape[0]}")
    n_pos = tokens.shape[1]
    if isinstance(position, bool) or not isinstance(position, int) or not -n_pos <= position < n_pos:
        raise IndexError(f"position must be an int in [-{n_pos}, {n_pos - 1}], got {position!r}")
    f, cfg = engine.f, model.cfg
    with torch.no_grad():
        run = engine.run(tokens)
    H, dh = cfg.n_heads, cfg.d_head
    rows: list[dict] = []
    frontier = {(cfg.n_layers - 1, position % n_pos, "post")}
    seen: set = set()
    while frontier:
        node = max(frontier)  # deepest first, so each state is expanded once
        frontier.discard(node)
        if node in seen:
            continue
        seen.add(node)
        layer, i, state = node
        w = f.weights.layers[layer]
        if state == "post" and not f.parallel:  # post = mid + mlp(mid)
            y = run.resid_post[layer][0, i]
            parts = torch.stack([run.resid_mid[layer][0, i], run.mlp_out[layer][0, i]])
            for k, importance in enumerate(_proximity(y, parts).tolist()):
                if importance > threshold:
                    rows.append(dict(layer=layer, from_pos=i, from_state="mid", to_pos=i, to_state="post",
                                     via=("residual", "mlp")[k], head=-1, importance=importance))
                    frontier.add((layer, i, "mid"))
            continue
        # an attention update: y = pre + sum over heads and source tokens of A v W_O (+ b_O) (+ mlp if parallel)
        to_state = "post" if f.parallel else "mid"
        y = (run.resid_post if f.parallel else run.resid_mid)[layer][0, i]
        pattern = run.pattern[layer][0, :, i, : i + 1]  # [head, src]
        v = run.v[layer][0, : i + 1][:, [cfg.kv_head(h) for h in range(H)]]  # [src, head, d_head]
        w_o = w.w_o.view(cfg.d_model, H, dh)
        writes = torch.einsum("hs,she,dhe->hsd", pattern, v, w_o)  # [head, src, d]
        parts = [run.resid_pre[layer][0, i], *writes.flatten(0, 1)]
        labels = [("residual", -1, i)] + [("head", h, s) for h in range(H) for s in range(i + 1)]
        if w.b_o is not None:
            parts.append(w.b_o)
            labels.append(("bias", -1, i))
        if f.parallel:
            parts.append(run.mlp_out[layer][0, i])
            labels.append(("mlp", -1, i))
        importance = _proximity(y, torch.stack(parts))
        for (via, head, src), value in zip(labels, importance.tolist()):
            if via == "bias" or value <= threshold:
                continue
            from_state = "pre"
            rows.append(dict(layer=layer, from_pos=src, from_state=from_state, to_pos=i, to_state=to_state,
                             via=via, head=head, importance=value))
            if layer > 0:
                frontier.add((layer - 1, src, "post"))
    columns = ["layer", "from_pos", "from_state", "to_pos", "to_state", "via", "head", "importance"]
    return pd.DataFrame(rows, columns=columns).sort_values(["layer", "to_pos", "importance"],
                                                           ascending=[False, True, False]).reset_index(drop=True)
