"""The latents an SAE selected for a batch, and the encoder/decoder products restricted to them.

Training an SAE spends its time in four products of size [batch, d_in] x [d_in, d_sae]: the
encoder forward, the decoder forward, and their backwards. Once an SAE is sparse (TopK always;
ReLU and JumpReLU after the first steps) only the active latents contribute to three of them:

- decoder forward    x_hat[b]     = sum_j f[b, j] W_dec[j]              over active (b, j)
- decoder backward   dW_dec[j]   += f[b, j] g[b],  df[b, j] = g[b] . W_dec[j]
- encoder backward   dW_enc[:, j] += dpre[b, j] x[b]                     (dpre is 0 elsewhere)

so `Code` keeps the active positions either as index lists (`rows`, `cols`, CSR `offsets`:
cost ~ nnz * d_in) or, when too many latents are active for that to pay, as a dense mask (cost
~ batch * d_sae * d_in, plain matrix products). Both give the same numbers; the encoder forward
stays dense (every pre-activation is needed to know which latents are active).

The sparse products are PyTorch embedding-bag kernels (weighted sums of gathered rows), each
with cost ~ nnz * d_in: `embedding_bag(cols, W_dec, offsets, per_sample_weights=f)` is the
decoder forward; the same kernel over the entries sorted by latent, gathering rows of the
[batch, d_in] gradient (or input), gives dW_dec (and dW_enc); `_embedding_bag_per_sample_weights_backward`
gives df. Sorting the entries once by latent and reusing it for both weight gradients is
cheaper than the embedding-bag backward, which sorts them again for each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Above this fraction of active (batch, latent) pairs the dense products are faster. On the
# 2-core CPU (d_in 768, d_sae 6144, batch 4096; 2026-11-30) index-list steps still beat dense ones
# at 10-12% density (1.0-1.2 s against 1.6 s); on CUDA the dense products are so fast that the
# limit stays at the 5% its timings were taken with.
SPARSE_MAX_DENSITY = 0.12
CUDA_SPARSE_MAX_DENSITY = 0.05


def _max_density(device: torch.device) -> float:
    return CUDA_SPARSE_MAX_DENSITY if device.type == "cuda" else SPARSE_MAX_DENSITY


class Code:
    """Positions of the active latents of a batch of `batch` rows, `d_sae` latents.

    Sparse: `rows`, `cols` [nnz] (row-major order), `offsets` [batch] (start of each row).
    Dense: `mask` [batch, d_sae] (bool).
    """

    def __init__(self, batch: int, d_sae: int, *, rows=None, cols=None, mask=None):
        self.batch, self.d_sae = batch, d_sae
        self.rows, self.cols, self.mask = rows, cols, mask
        self._by_latent = None  # the entries sorted by latent, made when first needed
        if rows is not None:
            counts = torch.bincount(rows, minlength=batch)
            self.offsets = torch.cumsum(counts, 0) - counts

    @property
    def is_sparse(self) -> bool:
        return self.mask is None

    @property
    def nnz(self) -> int:
        return self.cols.numel() if self.is_sparse else int(self.mask.count_nonzero())

    @classmethod
    def from_mask(cls, mask: torch.Tensor, *, sparse: bool | None = None) -> Code:
        """From a [batch, d_sae] bool mask; index lists when its density is at most `_max_density`
        (or as `sparse` says)."""
        batch, d_sae = mask.shape
        if sparse is None:
            sparse = int(mask.count_nonzero()) <= _max_density(mask.device) * mask.numel()
        if not sparse:
            return cls(batch, d_sae, mask=mask)
        rows, cols = mask.nonzero(as_tuple=True)
        return cls(batch, d_sae, rows=rows, cols=cols)

    @classmethod
    def from_indices(cls, indices: torch.Tensor, d_sae: int, *, sparse: bool | None = None) -> Code:
        """From [batch, k] latent indices per row (distinct within a row), e.g. a top-k."""
        batch, k = indices.shape
        if sparse is None:
            sparse = k <= _max_density(indices.device) * d_sae
        if not sparse:
            mask = torch.zeros(batch, d_sae, dtype=torch.bool, device=indices.device)
            return cls(batch, d_sae, mask=mask.scatter_(1, indices, True))
        rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
        return cls(batch, d_sae, rows=rows, cols=indices.reshape(-1))

    @classmethod
    def from_flat_indices(cls, flat: torch.Tensor, batch: int, d_sae: int, *, sparse: bool | None = None) -> Code:
        """From sorted indices into the flattened [batch * d_sae] layout (e.g. a BatchTopK)."""
        if sparse is None:
            sparse = flat.numel() <= _max_density(flat.device) * batch * d_sae
        rows, cols = flat // d_sae, flat % d_sae
        if sparse:
            return cls(batch, d_sae, rows=rows, cols=cols)
        mask = torch.zeros(batch * d_sae, dtype=torch.bool, device=flat.device)
        return cls(batch, d_sae, mask=mask.index_fill_(0, flat, True).view(batch, d_sae))

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """Values of a [batch, d_sae] tensor at the positions: [nnz] (sparse) or itself (dense)."""
        return dense[self.rows, self.cols] if self.is_sparse else dense

    def per_latent(self, vector: torch.Tensor) -> torch.Tensor:
        """A [d_sae] vector laid out like the values: vector[cols] (sparse) or broadcast (dense)."""
        return vector[self.cols] if self.is_sparse else vector

    def restrict(self, values: torch.Tensor) -> torch.Tensor:
        """Zero the values outside the positions (a no-op for index lists)."""
        return values if self.is_sparse else torch.where(self.mask, values, 0.0)

    def weighted_sum(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum over the positions (b, j) of values * weights[j], for `weights [d_sae]`;
        differentiable in both. Dense: column sums first, so no [batch, d_sae] product is made."""
        if self.is_sparse:
            return (values * weights[self.cols]).sum()
        return (values.sum(0) * weights).sum()

    def decode(self, values: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
        """sum_j values[b, j] W_dec[j] -> [batch, d_in] (no bias); differentiable in both."""
        if not self.is_sparse:
            return values @ W_dec
        return _SparseDecode.apply(values, W_dec, self)

    def per_latent_sum(self, dense: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[d_sae, d]: row j = sum over the entries (b, j) of weights[entry] * dense[b] (dense [batch, d])."""
        if self._by_latent is None:
            order = torch.sort(self.cols, stable=True).indices
            counts = torch.bincount(self.cols, minlength=self.d_sae)
            self._by_latent = (order, self.rows[order], torch.cumsum(counts, 0) - counts)
        order, rows, offsets = self._by_latent
        return F.embedding_bag(rows, dense, offsets, mode="sum", per_sample_weights=weights[order])

    def count_per_latent(self, values: torch.Tensor) -> torch.Tensor:
        """[d_sae]: in how many rows each latent is non-zero."""
        nonzero = values.detach() if values.dtype == torch.bool else values.detach() != 0
        if self.is_sparse:
            return torch.bincount(self.cols[nonzero], minlength=self.d_sae)
        # a byte view summed in int32 is several times faster than summing the bools themselves
        return nonzero.view(torch.uint8).sum(0, dtype=torch.int32).long()

    def encoder_values(self, pre: torch.Tensor, x_in: torch.Tensor, W_enc, b_enc, b_dec) -> torch.Tensor:
        """The pre-activations `pre` ([batch, d_sae], computed without autograd as
        x_in @ W_enc + b_enc with x_in = x - b_dec) at the positions, made differentiable in
        W_enc, b_enc and (when given, i.e. apply_b_dec_to_input) b_dec, without recomputing them.
        Gradients reach only the positions, so the encoder backward costs ~ nnz * d_in."""
        return _EncoderValues.apply(self.gather(pre), x_in, W_enc, b_enc, b_dec, self)


class _EncoderValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x_in, W_enc, b_enc, b_dec, code):
        ctx.code = code
        ctx.has_b_dec = b_dec is not None
        ctx.save_for_backward(x_in, W_enc)
        return values.view_as(values)  # no copy: nothing writes to the pre-activations afterwards

    @staticmethod
    def backward(ctx, grad):
        x_in, W_enc = ctx.saved_tensors
        code: Code = ctx.code
        if code.is_sparse:
            grad_W_enc = code.per_latent_sum(x_in, grad).T
            grad_b_enc = torch.zeros(code.d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, code.cols, grad)
        else:
            grad_W_enc = x_in.T @ grad
            grad_b_enc = grad.sum(0)
        # pre = (x - b_dec) @ W_enc + b_enc, so d pre / d b_dec = -W_enc for every row
        grad_b_dec = -(W_enc @ grad_b_enc) if ctx.has_b_dec else None
        return None, None, grad_W_enc, grad_b_enc, grad_b_dec, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, W_dec, code):
        ctx.code = code
        ctx.save_for_backward(values, W_dec)
        return F.embedding_bag(code.cols, W_dec, code.offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):
        values, W_dec = ctx.saved_tensors
        code: Code = ctx.code
        grad = grad.contiguous()
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:  # grad[b] . W_dec[j] for each entry (b, j)
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, W_dec, code.cols, code.offsets, code.rows, 0, -1)
        if ctx.needs_input_grad[1]:
            grad_W_dec = code.per_latent_sum(grad, values)
        return grad_values, grad_W_dec, None
