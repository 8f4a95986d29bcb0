"""A circuit's own run, changed one receiver at a time: ACDC's inner loop.

In a masked run (`edges.masked_final`) each receiver reads, for each of its edges, the
sender's output in that run where the edge is in the circuit and the sender's ablated output
where it is not. When the variants of a run differ only in the edges into one receiver r, the
only outputs that can differ from the circuit's own run are those of r's node and of the nodes
reached from it through edges *in the circuit*: every other receiver reads unchanged senders
or ablated values. `CircuitState` keeps every sender's output in the circuit's run;
`CircuitState.try_receiver` recomputes r's node and what it reaches, layer by layer, for a
batch of variants of r's incoming edges. Below the receiver ACDC is trying, its circuit is
already pruned, so a variant costs a few heads rather than every layer after r.

Positions before the first one where a sender's ablated output differs from its clean one
(`p0`) are the clean run's in every variant. A node is recomputed only at the positions the
circuit reads it: everywhere from p0 when a key or value input reads it (directly, or through
the query and MLP inputs of nodes read so), at the answer positions alone otherwise — always
so for the last layer, whose senders only that layer's MLP and the logits read. Such a node's
other positions are then out of date; the state refuses a variant that would read them.
"""

from __future__ import annotations

import torch

from .edges import CircuitRunner, attend_heads, head_outputs, sender_outputs


class CircuitState:
    """Every sender's output in the run of one circuit, starting from the full graph (the
    clean run), and the residual the logits read.

    mask `[n_senders, n_receivers]`: the circuit. outs `[n_up, B, P, d_model]`: the senders
    before the last layer at positions p0..; at_answer `[n_senders, B, 1, d_model]`: every
    sender at each prompt's answer position; final_in `[B, d_model]`: the residual entering
    the final norm there. A sender left with no edge in the circuit keeps a stale output
    (nothing reads it).
    """

    def __init__(self, runner: CircuitRunner):
        engine, clean, task = runner.engine, runner.clean, runner.task
        self.engine, self.layout, self.clean, self.p0 = engine, runner.layout, clean, runner.p0
        cfg = engine.cfg
        self.H, self.n_layers = cfg.n_heads, cfg.n_layers
        self.n_up = self.layout.sender(cfg.n_layers - 1, 0)  # senders before the last layer
        self.answer_pos = task.answer_pos
        self._rows = torch.arange(task.batch, device=task.answer_pos.device)
        clean_out = sender_outputs(engine, clean)
        self._clean = {False: clean_out[: self.n_up, :, self.p0:], True: self._at_answer(clean_out)}
        self._ablated = {False: runner.ablated[: self.n_up, :, self.p0:], True: self._at_answer(runner.ablated)}
        self._ablated_moved = {a: self._ablated[a] - self._clean[a] for a in (False, True)}
        self._moved_cache: dict[bool, torch.Tensor] = {}
        self._exists = self.layout.exists.to(clean_out.device)
        self.mask = self._exists.clone()
        self.outs = self._clean[False].clone()
        self.at_answer = self._clean[True].clone()
        self.final_in = clean.resid_post[-1][self._rows, self.answer_pos]
        self._partial: set[int] = set()  # senders before the last layer whose outs are right at the answer positions only

    def _at_answer(self, t: torch.Tensor, first: int = 0) -> torch.Tensor:
        """`t [..., B, pos, d]` (positions `first`..) at each prompt's answer position, `[..., B, 1, d]`."""
        return t[..., self._rows, self.answer_pos - first, :].unsqueeze(-2)

    def _outs(self, answer: bool) -> torch.Tensor:
        return self.at_answer if answer else self.outs

    def connected(self, r: int) -> bool:
        """Whether receiver r's node still sends an edge in the circuit (the logits always do)."""
        node = self.layout.node(r)
        return node is None or bool(self.mask[node].any())

    # ------------------------------------------------------------ inputs

    def _inputs(self, receivers: list[int], answer: bool) -> torch.Tensor:
        """What each receiver reads in the circuit's run, `[R, B, P, d]` (P = 1 at the answer)."""
        clean = self.clean
        layer = self.layout.receiver_layer[receivers[0]]
        if layer == self.n_layers:
            base = clean.resid_post[-1]
        elif receivers[0] == self.layout.receiver(layer, "mlp"):
            base = clean.mlp_in[layer]
        else:
            base = clean.resid_pre[layer]
        base = self._at_answer(base) if answer else base[:, self.p0:]
        moved, ablated = self._moved(answer), self._ablated_moved[answer]
        n = moved.shape[0]
        on = self.mask[:n, receivers].to(moved.dtype)
        off = (self._exists[:n, receivers] & ~self.mask[:n, receivers]).to(moved.dtype)
        return base + torch.einsum("sr,sbpd->rbpd", on, moved) + torch.einsum("sr,sbpd->rbpd", off, ablated)

    def _moved(self, answer: bool) -> torch.Tensor:
        """The senders' outputs minus their clean outputs (cached until the state changes)."""
        if answer not in self._moved_cache:
            self._moved_cache[answer] = self._outs(answer) - self._clean[answer]
        return self._moved_cache[answer]

    # ------------------------------------------------------------ variants

    def accept(self, variants: "Variants", j: int) -> None:
        """Make variant j of `variants` (from this state's `try_receiver`) the circuit."""
        self._moved_cache.clear()
        self.mask[:, variants.receiver] = variants.columns[j]
        for u, (outs, at_answer) in variants.new.items():
            if outs is not None:
                self.outs[u] = outs[j]
                self._partial.discard(u)
            elif u < self.n_up:
                self._partial.add(u)
            self.at_answer[u] = at_answer[j]
        self.final_in = variants.final_in[j]

    def _read_everywhere(self, mask: torch.Tensor) -> torch.Tensor:
        """`[n_senders]` bool: whether circuit `mask` reads a sender's output at positions other
        than the answer ones. Keys and values read every position; a query or MLP input only
        where its own node is read (a head's query at the answer position needs its keys and
        values everywhere, not its query); the logits read the answer positions alone."""
        H, layout = self.H, self.layout
        reads = torch.zeros(mask.shape[1], dtype=torch.bool, device=mask.device)  # per receiver
        for layer in range(self.n_layers):
            reads[layout.receiver(layer, "k"):layout.receiver(layer, "mlp")] = True  # the k and v inputs
        needs = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        for layer in range(self.n_layers - 2, -1, -1):  # the last layer's senders: the answer positions only
            mlp, queries = layout.sender(layer), layout.receiver(layer, "q")
            needs[mlp] = (mask[mlp] & reads).any()
            reads[layout.receiver(layer, "mlp")] = needs[mlp]
            needs[mlp - H:mlp] = (mask[mlp - H:mlp] & reads).any(-1)
            reads[queries:queries + H] = needs[mlp - H:mlp]
        needs[0] = (mask[0] & reads).any()
        return needs

    def try_receiver(self, r: int, columns: torch.Tensor) -> "Variants":
        """Run the circuit with receiver r's incoming edges replaced by each row of `columns
        [N, n_senders]` (True: the edge is in); returns the variants' final-normed residuals
        at the answer positions and what `accept` needs.

        Each node reached is recomputed where the circuit reads it: at every position from p0
        when a key or value input reads it (directly or through query and MLP inputs), at the
        answer positions alone otherwise."""
        n_senders, n_receivers = self.mask.shape
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < n_receivers:
            raise ValueError(f"r must be a receiver index in [0, {n_receivers - 1}], got {r!r}")
        if columns.dtype != torch.bool or columns.ndim != 2 or columns.shape[1] != n_senders or not len(columns):
            raise ValueError(f"columns must be a non-empty bool tensor [N, {n_senders}] (variants, senders), got "
                             f"{columns.dtype} {tuple(columns.shape)}")
        if (columns & ~self._exists[:, r].to(columns.device)).any():
            raise ValueError(f"columns name senders that are not upstream of receiver {self.layout.receivers[r]}")
        n = columns.shape[0]
        columns = columns.to(self.mask.device)
        own = columns.to(self.outs.dtype) - self.mask[:, r].to(self.outs.dtype)  # [N, S]: +1 edge in, -1 out
        union = self.mask.clone()
        union[:, r] |= columns.any(0)
        everywhere = self._read_everywhere(union).tolist()
        if any(everywhere[u] for u in self._partial):
            raise ValueError("an edge added back reads a sender this state keeps at the answer positions only; "
                             "start a new CircuitState for a circuit that gains edges")
        links = self.mask.tolist()  # looked up per sender and receiver below
        new: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}  # sender -> (outs [N,B,P,d], at answer [N,B,1,d])

        def at_answer_only(receiver: int) -> bool:
            kind = self.layout.kind(receiver)
            if kind == "logits":
                return True
            return kind not in ("k", "v") and not everywhere[self.layout.node(receiver)]

        def delta(receiver: int) -> torch.Tensor | None:
            """How receiver's input moves in each variant `[N, B, P, d]`, or None where it does not."""
            answer = at_answer_only(receiver)
            outs, ablated = self._outs(answer), self._ablated[answer]
            total = None
            if receiver == r:
                total = torch.einsum("ns,sbpd->nbpd", own[:, :outs.shape[0]], outs - ablated)
            for u, values in new.items():
                if links[u][receiver]:
                    moved = values[answer] - outs[u]
                    total = moved if total is None else total + moved
            return total

        def store(u: int, out: torch.Tensor, answer: bool) -> None:
            new[u] = (None, out) if answer else (out, self._at_answer(out, self.p0))

        for layer in range(self.layout.receiver_layer[r], self.n_layers):
            moves = {kind: [delta(self.layout.receiver(layer, kind, h)) for h in range(self.H)] for kind in "qkv"}
            heads = [h for h in range(self.H) if any(moves[kind][h] is not None for kind in "qkv")]
            for answer in (False, True):
                group = [h for h in heads if everywhere[self.layout.sender(layer, h)] != answer]
                if group:
                    self._run_heads(layer, group, moves, n, answer, store)
            receiver = self.layout.receiver(layer, "mlp")
            mlp_delta = delta(receiver)
            if mlp_delta is not None:
                answer = at_answer_only(receiver)
                mlp_in = self._inputs([receiver], answer)[0] + mlp_delta
                store(self.layout.sender(layer), self.engine.f.mlp(layer, mlp_in), answer)
        logits_delta = delta(len(self.layout.receivers) - 1)
        final_in = self.final_in.expand(n, -1, -1)
        if logits_delta is not None:
            final_in = final_in + logits_delta[:, :, 0]
        return Variants(self, r, columns, new, final_in)

    def _run_heads(self, layer: int, heads: list[int], changed: dict, n: int, answer: bool, store) -> None:
        """Recompute `heads` of `layer` whose q, k or v input moves by `changed[kind][h]`, with
        their queries at the answer positions alone when `answer`."""
        inputs = {}
        for kind in "qkv":
            at_answer = answer and kind == "q"
            base = self._inputs([self.layout.receiver(layer, kind, h) for h in heads], at_answer)  # [h, B, P, d]
            moves = [changed[kind][h] for h in heads]
            if all(m is None for m in moves):
                inputs[kind] = base.unsqueeze(0)
            else:
                inputs[kind] = base + torch.stack([torch.zeros_like(base[0]).expand(n, -1, -1, -1) if m is None
                                                   else m for m in moves], dim=1)
        index = torch.tensor(heads, device=self.outs.device)
        z = attend_heads(self.engine, self.clean, layer, index, inputs["q"], inputs["k"], inputs["v"], self.p0,
                         self.answer_pos if answer else None)
        out = head_outputs(self.engine, layer, z, index).expand(n, -1, -1, -1, -1)
        for i, h in enumerate(heads):
            store(self.layout.sender(layer, h), out[:, i], answer)


class Variants:
    """The runs of `CircuitState.try_receiver`: `final` `[N, B, d_model]` (final-normed, at the
    answer positions); `CircuitState.accept(variants, j)` makes variant j the circuit."""

    def __init__(self, state: CircuitState, receiver: int, columns: torch.Tensor, new: dict, final_in: torch.Tensor):
        self.receiver, self.columns, self.new, self.final_in = receiver, columns, new, final_in
        self.final = state.engine.f.final(final_in)
