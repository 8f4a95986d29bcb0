"""Information-flow routes (Ferrando & Voita, 2024): which parts of each residual update carry
the prediction, from one forward pass and no counterfactual.

A residual update y is a sum of parts z (the residual it starts from, each head's write from
each source token, the MLP's write, the biases). A part's importance is its *proximity* to the
sum, max(||y||_1 - ||y - z||_1, 0), normalised over the parts (METHODS.md §5).

* `token_routes`: the token-level graph of one prompt. Nodes are residual states (layer,
  position, "pre"/"mid"/"post"); an edge is a part whose importance exceeds `threshold`
  (the paper's tool uses 0.04), kept only when it lies on a route back from the prediction.
* `routes_scores`: the same proximity aggregated to the edge graph of `circuits.graph`, as
  EAP-IG's implementation does: for each receiver's input (a head's q/k/v input, an MLP's,
  the logits') and each upstream sender, the sender output's proximity to that input,
  normalised over the upstream senders and averaged over the prompts' positions.
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
    """Edge scores `[n_senders, n_receivers]` (NaN off-edges) from the clean prompts of `task`:
    each sender's normalised proximity to each downstream receiver's input, averaged over every
    prompt's positions up to its answer position."""
    engine = check_edge_model(model)
    layout = EdgeLayout.for_model(model)
    task = task.to(model.device)
    with torch.no_grad():
        run = engine.run(task.clean)
        outs = sender_outputs(engine, run).float()  # [S, B, pos, d]
        inputs = []
        for layer in range(model.cfg.n_layers):
            inputs += [run.resid_pre[layer]] * (3 * model.cfg.n_heads) + [run.mlp_in[layer]]
        inputs.append(run.resid_post[-1])
        real = (torch.arange(task.n_pos, device=outs.device)[None] <= task.answer_pos[:, None]).float()  # [B, pos]
        scores = torch.full(layout.exists.shape, float("nan"))
        for r, x in enumerate(inputs):
            upstream = layout.exists[:, r].nonzero()[:, 0].to(outs.device)
            importance = _proximity(x.float(), outs[upstream])  # [S_up, B, pos]
            per_prompt = (importance * real).sum(-1) / real.sum(-1)
            scores[upstream.cpu(), r] = per_prompt.mean(-1).cpu()
    return layout, scores


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
