"""The model sites an SAE can read, their activation widths, and the flat view an SAE sees.

An SAE reads one site's activation at each token as a vector [d_in]:

    resid_pre/resid_mid/resid_post(l), attn_out(l), mlp_in(l), mlp_out(l)   d_in = d_model
    z(l)       every head's z concatenated, head-major:                     d_in = n_heads * d_head
               [.., head, d_head] -> [.., head * d_head] (SAELens's "hook_z" reshape)
    z(l, h)    one head's z                                                  d_in = d_head

Sites are `interp.models.sites` objects or strings in the model layer's spelling ("resid_pre(2)",
"z(1, 3)") or TransformerLens hook names ("blocks.2.hook_resid_pre", "blocks.1.attn.hook_z").
"""

from __future__ import annotations

import torch

from interp.models import HookedModel, Site, sites

SAE_SITE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_in", "mlp_out", "z")


def check_site(model: HookedModel, site: Site | str) -> Site:
    """The `Site` an SAE on `model` reads, or a clear error: an unknown spelling, a kind SAEs do
    not read here, a layer or head out of range, resid_mid on a parallel-block model."""
    site = sites.parse(site)
    if site.kind not in SAE_SITE_KINDS:
        raise ValueError(f"SAEs read one of the sites {', '.join(SAE_SITE_KINDS)} (z with or without a head); "
                         f"got {site}")
    c = model.cfg
    if not 0 <= site.layer < c.n_layers:
        raise IndexError(f"{site}: layer {site.layer} is out of range: {c.name} has layers 0..{c.n_layers - 1}")
    if site.head is not None and not 0 <= site.head < c.n_heads:
        raise IndexError(f"{site}: head {site.head} is out of range: {c.name} has heads 0..{c.n_heads - 1}")
    if site.kind == "resid_mid" and c.parallel:
        raise ValueError(f"{site}: {c.name} ({c.family}) runs attention and MLP in parallel, so it has no residual "
                         f"stream between them; use resid_pre, attn_out, mlp_in or mlp_out")
    return site


def site_width(model: HookedModel, site: Site) -> int:
    """d_in of an SAE at `site` (see the module docstring)."""
    c = model.cfg
    if site.kind == "z":
        return c.d_head if site.head is not None else c.n_heads * c.d_head
    return c.d_model


def describe_width(model: HookedModel, site: Site) -> str:
    """The width of `site` with where it comes from, for error messages."""
    c = model.cfg
    if site.kind == "z" and site.head is None:
        return f"{c.n_heads * c.d_head} (n_heads * d_head = {c.n_heads} * {c.d_head})"
    if site.kind == "z":
        return f"{c.d_head} (d_head)"
    return f"{c.d_model} (d_model)"


def flat(activation: torch.Tensor, site: Site) -> torch.Tensor:
    """A site's captured activation as SAE input [batch, pos, d_in] (z of all heads flattened)."""
    if site.kind == "z" and site.head is None:
        return activation.flatten(-2)
    return activation


def check_finite(x: torch.Tensor, site: Site, where: str = "") -> None:
    """Refuse NaN or inf activations, naming the site (and where in the corpus)."""
    if not torch.isfinite(x.sum()) and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise FloatingPointError(f"the model produced NaN or inf activations at {site}{where}: "
                                 f"{bad} of {x.numel()} values")


def saelens_metadata(model: HookedModel, site: Site) -> dict:
    """SAELens's metadata fields that say where an SAE reads (`hook_name`, `hook_head_index`),
    plus headlab's `site` spelling."""
    return {"model_name": model.cfg.name, "hook_name": sites.hook_name(site), "hook_head_index": site.head,
            "site": str(site)}


def sae_site(sae, site: Site | str | None) -> Site:
    """The site an SAE reads: `site` when given, else its metadata's `site`, else its SAELens
    `hook_name` (+ `hook_head_index`)."""
    if site is not None:
        return sites.parse(site)
    meta = sae.cfg.metadata
    if meta.get("site"):
        return sites.parse(meta["site"])
    if meta.get("hook_name"):
        parsed = sites.parse(meta["hook_name"])
        head = meta.get("hook_head_index")
        return Site(parsed.kind, parsed.layer, head) if head is not None else parsed
    raise ValueError("the SAE's metadata names no site (neither 'site' nor 'hook_name'); pass site=...")
