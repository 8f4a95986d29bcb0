"""Activations of model sites over a corpus, streamed in shuffled batches for SAE training.

    store = ActivationStore(model, texts, ["resid_pre(2)", "z(1)"], batch_size=4096)
    batch = next(iter(store.batches()))      # {"resid_pre(2)": [4096, 128], "z(1)": [4096, 128]}
    result = train_saes_on_store({"res": sae_a, "attn": sae_b}, store, TrainConfig(...),
                                 sites={"res": "resid_pre(2)", "attn": "z(1)"})

One forward pass over the model serves every site (each site's activation is captured in the
same run). What an SAE sees at each site is described in `analyses.sae.sites`.

Corpus: a list of texts (each tokenized alone as one sequence, with the model layer's framing:
one BOS first for causal models; a text longer than the model's context is refused, never
truncated) or a token tensor [batch, pos] with an optional 0/1 `attention_mask`.

Tokens: padding is never used. Special tokens (the tokenizer's `all_special_ids`: BOS, EOS,
padding, unknown, [CLS], [SEP], ...) are excluded by default (`exclude_special_tokens=True`, as
SAELens): the BOS position carries massive norms that would dominate training. A collection of
token ids excludes exactly those; False keeps every real token.

Order: each epoch visits the prompts in a fresh seeded order, `prompts_per_forward` at a time;
activations collect in a buffer of `n_batches_in_buffer * batch_size` tokens, which is shuffled
(seeded) and cut into batches; the remainder is carried into the next buffer (and across
epochs), so every batch has exactly `batch_size` rows and every token is used once per epoch.
`batches()` runs forever (epoch after epoch) unless `epochs` is given; then the last partial
batch is dropped. Same seed, same corpus -> the same batches.

Normalisation (one convention): `normalize_activations="expected_average_only_in"` (default,
SAELens's name) multiplies each site's activations by s = sqrt(d_in) / E||x||, with E||x|| the
mean norm over the first `n_norm_estimate_tokens` tokens of the corpus (in its order), so that batches have mean
norm ~ sqrt(d_in) whatever the site; "none" gives s = 1. Batches come scaled.
`train_saes_on_store` folds s into the trained SAE (`SAE.fold_activation_norm_scaling_factor`),
so the SAE it returns reads raw activations, and records s and the convention in its metadata.

Disk cache: with `cache_dir`, the first use runs the model once over the corpus and writes the
activations of every site in shards of about `shard_tokens` tokens (`shard_00000.safetensors`,
..., each written to a temporary name and renamed; `manifest.json` last, likewise), then every epoch reads the shards (in a seeded
order). A folder whose manifest matches (model, sites, exclusions, corpus fingerprint) is reused
by later stores; one that holds another corpus or model is refused, never overwritten; shards
without a manifest (an interrupted fill) are discarded and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from analyses.sae.sites import check_finite, check_site, describe_width, flat, saelens_metadata, site_width
from interp.models import HookedModel, Site

NORMALIZATIONS = ("expected_average_only_in", "none")
MANIFEST = "manifest.json"
CACHE_FORMAT = 1


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def corpus_tokens(model: HookedModel, corpus, attention_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokens [batch, pos]` and the bool `real [batch, pos]` (False on padding) of a corpus:
    a non-empty list of texts or a token tensor (see the module docstring). On the CPU."""
    if isinstance(corpus, str):
        raise TypeError("the corpus is a list of texts or a token tensor [batch, pos], got a single string; "
                        "wrap it in a list")
    if isinstance(corpus, torch.Tensor):
        if corpus.numel() == 0:
            raise ValueError(f"the corpus is empty: a token tensor of shape {list(corpus.shape)}")
    elif isinstance(corpus, Sequence):
        if len(corpus) == 0:
            raise ValueError("the corpus is empty: no texts")
        empty = [i for i, text in enumerate(corpus) if isinstance(text, str) and not text.strip()]
        if empty:
            raise ValueError(f"the corpus has empty texts (at indices {empty[:5]}{', ...' if len(empty) > 5 else ''})")
    else:
        raise TypeError(f"the corpus is a list of texts or a token tensor [batch, pos], got {type(corpus).__name__}")
    tokens, real = model.tokenize(corpus, attention_mask)
    return tokens.cpu(), real.cpu()


def excluded_ids(model: HookedModel, exclude_special_tokens: bool | Collection[int]) -> list[int]:
    """The token ids never used: the tokenizer's special tokens (True), the given ids, or none."""
    if exclude_special_tokens is True:
        return sorted(set(model.tokenizer.all_special_ids))
    if exclude_special_tokens is False:
        return []
    ids = list(exclude_special_tokens)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"exclude_special_tokens must be True, False or a collection of token ids (ints), "
                        f"got {exclude_special_tokens!r}")
    return sorted(set(ids))


def kept_positions(tokens: torch.Tensor, real: torch.Tensor, excluded: Sequence[int]) -> torch.Tensor:
    """bool [batch, pos]: real tokens whose id is not excluded."""
    keep = real.clone()
    if excluded:
        keep &= ~torch.isin(tokens, torch.tensor(list(excluded), dtype=tokens.dtype, device=tokens.device))
    return keep


class ActivationStore:
    """Activations of `sites` of `model` over `corpus`, in shuffled batches (module docstring).

    Attributes: `sites` (the `Site`s), `names` (their strings, the keys of each batch dict),
    `d_in` (name -> width), `n_tokens` (tokens used per epoch), `tokens`/`keep` [prompt, pos]
    (the corpus and which tokens are used), `scaling_factors` (name -> s, computed on first use).
    """

    def __init__(self, model: HookedModel, corpus: Sequence[str] | torch.Tensor, sites: Sequence[Site | str] | Site | str,
                 *, attention_mask: torch.Tensor | None = None, batch_size: int = 4096, n_batches_in_buffer: int = 8,
                 prompts_per_forward: int = 32, exclude_special_tokens: bool | Collection[int] = True,
                 normalize_activations: str = "expected_average_only_in", n_norm_estimate_tokens: int = 100_000,
                 cache_dir: str | os.PathLike | None = None, shard_tokens: int = 65536, seed: int = 0, dataset_path: str | None = None,
                 device: str | torch.device | None = None, progress: bool = True):
        if not isinstance(model, HookedModel):
            raise TypeError(f"model must be a HookedModel (interp.load_model), got {type(model).__name__}")
        if isinstance(sites, (Site, str)):
            sites = [sites]
        self.sites = [check_site(model, s) for s in sites]
        if not self.sites:
            raise ValueError("an ActivationStore needs at least one site")
        self.names = [str(s) for s in self.sites]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"sites are repeated: {self.names}")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.n_batches_in_buffer = positive_int(n_batches_in_buffer, "n_batches_in_buffer")
        self.prompts_per_forward = positive_int(prompts_per_forward, "prompts_per_forward")
        self.n_norm_estimate_tokens = positive_int(n_norm_estimate_tokens, "n_norm_estimate_tokens")
        self.shard_tokens = positive_int(shard_tokens, "shard_tokens")
        if normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations must be one of {NORMALIZATIONS}, got {normalize_activations!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.model = model
        self.normalize_activations = normalize_activations
        self.seed = seed
        self.dataset_path = dataset_path
        self.device = torch.device(device) if device is not None else model.device
        self.progress = progress
        self.d_in = {name: site_width(model, s) for name, s in zip(self.names, self.sites)}
        self.tokens, real = corpus_tokens(model, corpus, attention_mask)
        self.excluded = excluded_ids(model, exclude_special_tokens)
        self.exclude_special_tokens = exclude_special_tokens if isinstance(exclude_special_tokens, bool) else self.excluded
        self.keep = kept_positions(self.tokens, real, self.excluded)
        self.lengths = real.sum(1)  # tokens of each prompt (padding is on the right)
        self.n_tokens = int(self.keep.sum())
        if self.n_tokens == 0:
            raise ValueError(f"the corpus ({len(self.tokens)} prompts) has no tokens left once special tokens "
                             f"{self.excluded} and padding are excluded")
        self.prepend_bos = bool(model.cfg.is_causal and model.tokenizer.bos_token_id is not None
                                and (self.tokens[:, 0] == model.tokenizer.bos_token_id).all())
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._scaling_factors: dict[str, float] | None = None
        self._shards: list[dict] | None = None

    def __repr__(self) -> str:
        return (f"ActivationStore({self.model.cfg.name!r}, sites={self.names}, {len(self.tokens)} prompts, "
                f"{self.n_tokens} tokens, batch_size={self.batch_size}, normalize={self.normalize_activations!r}"
                f"{f', cache_dir={str(self.cache_dir)!r}' if self.cache_dir else ''})")

    # ---- raw activations, one forward (or one shard) at a time -------------------------------

    def _forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Kept activations of prompts `rows` (in that order, row-major): name -> [n, d_in] float32,
        plus "token_ids", "prompt", "position" [n] (int64)."""
        width = int(self.lengths[rows].max())
        tokens = self.tokens[rows, :width]
        keep = self.keep[rows, :width]
        mask = (torch.arange(width)[None, :] < self.lengths[rows][:, None]).long()
        _, cache = self.model.run(tokens, capture=self.sites, attention_mask=mask, stop_early=True)
        keep_dev = keep.to(self.model.device)
        out = {}
        for name, site in zip(self.names, self.sites):
            x = flat(cache[site], site)[keep_dev].to(self.device, torch.float32)
            first, last = int(rows.min()), int(rows.max())
            check_finite(x, site, f" (prompts {first}..{last} of the corpus)")
            out[name] = x
        prompt, position = keep.nonzero(as_tuple=True)
        out["prompt"], out["position"] = rows[prompt], position
        out["token_ids"] = tokens[keep]
        return out

    def _model_chunks(self, order: torch.Tensor, desc: str) -> Iterator[dict[str, torch.Tensor]]:
        n = self.prompts_per_forward
        starts = range(0, len(order), n)
        for start in tqdm(starts, disable=not self.progress, desc=desc, leave=False):
            with torch.no_grad():  # not around the yield: grad mode would leak into the consumer
                chunk = self._forward(order[start:start + n])
            if len(chunk["prompt"]):
                yield chunk

    def _chunks(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """The kept activations of one epoch, prompts (or shards) in the epoch's seeded order."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.cache_dir is None:
            yield from self._model_chunks(torch.randperm(len(self.tokens), generator=gen), f"activations, epoch {epoch}")
            return
        shards = self._cached_shards()
        for i in torch.randperm(len(shards), generator=gen).tolist():
            yield self._read_shard(shards[i])

    def _in_corpus_order(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.cache_dir is None:
            yield from self._model_chunks(torch.arange(len(self.tokens)), "activations")
        else:
            for shard in self._cached_shards():
                yield self._read_shard(shard)

    # ---- normalisation ---------------------------------------------------------------------------

    @property
    def scaling_factors(self) -> dict[str, float]:
        """name -> s: the factor batches are multiplied by (1.0 for normalize_activations="none")."""
        if self._scaling_factors is None:
            self._scaling_factors = self._estimate_scaling_factors()
        return self._scaling_factors

    def _estimate_scaling_factors(self) -> dict[str, float]:
        if self.normalize_activations == "none":
            return dict.fromkeys(self.names, 1.0)
        if self.cache_dir is not None:
            self._cached_shards()
            saved = self._manifest().get("scaling_factors", {})
            if saved.get("n_norm_estimate_tokens") == self.n_norm_estimate_tokens:
                return saved["factors"]
        sums, count = dict.fromkeys(self.names, 0.0), 0
        for chunk in self._in_corpus_order():
            take = min(len(chunk["prompt"]), self.n_norm_estimate_tokens - count)
            for name in self.names:
                sums[name] += chunk[name][:take].norm(dim=-1).double().sum().item()
            count += take
            if count == self.n_norm_estimate_tokens:
                break
        factors = {}
        for name in self.names:
            mean_norm = sums[name] / count
            if not mean_norm > 0:
                raise ValueError(f"the activations at {name} have mean norm {mean_norm}: they cannot be scaled to "
                                 f"norm sqrt(d_in); use normalize_activations='none'")
            factors[name] = math.sqrt(self.d_in[name]) / mean_norm
        if self.cache_dir is not None:
            self._write_manifest({**self._manifest(), "scaling_factors": {
                "n_norm_estimate_tokens": self.n_norm_estimate_tokens, "factors": factors}})
        return factors

    # ---- batches ---------------------------------------------------------------------------------

    def batches(self, start_step: int = 0, *, epochs: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches {name: [batch_size, d_in]} (scaled, see the module docstring), skipping the
        first `start_step` (so `train_saes` can resume: pass `store.batches` itself). Forever,
        unless `epochs` is given."""
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
        if epochs is not None:
            positive_int(epochs, "epochs")
        if self.n_tokens < self.batch_size:
            raise ValueError(f"the corpus has {self.n_tokens} usable tokens, fewer than one batch "
                             f"(batch_size={self.batch_size})")
        scales = self.scaling_factors
        buffer_rows = self.n_batches_in_buffer * self.batch_size
        gen = torch.Generator().manual_seed(self.seed)
        pending: list[dict[str, torch.Tensor]] = []
        n_pending = 0
        step = 0
        epoch = 0
        while epochs is None or epoch < epochs:
            for chunk in self._chunks(epoch):
                pending.append({name: chunk[name] for name in self.names})
                n_pending += len(chunk["prompt"])
                if n_pending < buffer_rows:
                    continue
                buffer = {name: torch.cat([p[name] for p in pending]) for name in self.names}
                perm = torch.randperm(n_pending, generator=gen).to(self.device)
                n_full = n_pending // self.batch_size * self.batch_size
                for start in range(0, n_full, self.batch_size):
                    if step >= start_step:
                        idx = perm[start:start + self.batch_size]
                        yield {name: buffer[name][idx] * scales[name] for name in self.names}
                    step += 1
                rest = perm[n_full:]
                pending = [{name: buffer[name][rest] for name in self.names}]
                n_pending = len(rest)
            epoch += 1
        # finite epochs: what is pending is shuffled and cut as well; the last partial batch is dropped
        if n_pending >= self.batch_size:
            buffer = {name: torch.cat([p[name] for p in pending]) for name in self.names}
            perm = torch.randperm(n_pending, generator=gen).to(self.device)
            for start in range(0, n_pending // self.batch_size * self.batch_size, self.batch_size):
                if step >= start_step:
                    idx = perm[start:start + self.batch_size]
                    yield {name: buffer[name][idx] * scales[name] for name in self.names}
                step += 1

    def activations(self, site: Site | str | None = None) -> torch.Tensor:
        """Every used token's (unscaled) activation of one site, corpus order: [n_tokens, d_in]."""
        name = self.site_name(site)
        return torch.cat([chunk[name] for chunk in self._in_corpus_order()])

    def site_name(self, site: Site | str | None) -> str:
        """The key of `site` in this store's batches (its only site when None)."""
        if site is None:
            if len(self.names) > 1:
                raise ValueError(f"this store has several sites {self.names}: name one")
            return self.names[0]
        name = str(check_site(self.model, site))
        if name not in self.names:
            raise KeyError(f"{name} is not one of this store's sites {self.names}")
        return name

    def width_description(self, site: Site | str | None = None) -> str:
        """The width of a site's activations and where it comes from ("128 (n_heads * d_head = 8 * 16)")."""
        name = self.site_name(site)
        return describe_width(self.model, self.sites[self.names.index(name)])

    def sae_metadata(self, site: Site | str | None = None) -> dict:
        """SAELens metadata for an SAE trained on one of this store's sites."""
        name = self.site_name(site)
        s = self.sites[self.names.index(name)]
        return {**saelens_metadata(self.model, s), "context_size": int(self.lengths.max()),
                "prepend_bos": self.prepend_bos, "dataset_path": self.dataset_path, "seqpos_slice": [None],
                "exclude_special_tokens": self.exclude_special_tokens,
                "normalize_activations_in_training": self.normalize_activations,
                "activation_norm_scaling_factor": self.scaling_factors[name]}

    # ---- the disk cache ----------------------------------------------------------------------------

    def _fingerprint(self) -> dict:
        digest = hashlib.sha256()
        digest.update(self.tokens.numpy().tobytes())
        digest.update(self.keep.numpy().tobytes())
        digest.update(str(list(self.tokens.shape)).encode())
        return {"format": CACHE_FORMAT, "model": self.model.cfg.name, "sites": self.names, "d_in": self.d_in,
                "excluded_token_ids": self.excluded, "corpus_sha256": digest.hexdigest()}

    def _manifest(self) -> dict:
        path = self.cache_dir / MANIFEST
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete the folder to rebuild the cache") from None

    def _write_manifest(self, manifest: dict) -> None:
        tmp = self.cache_dir / f".{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, self.cache_dir / MANIFEST)

    def _cached_shards(self) -> list[dict]:
        if self._shards is None:
            self._shards = self._open_cache()
        return self._shards

    def _open_cache(self) -> list[dict]:
        folder = self.cache_dir
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"cache_dir {folder} is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        expected = self._fingerprint()
        if (folder / MANIFEST).exists():
            manifest = self._manifest()
            found = {key: manifest.get(key) for key in expected}
            if found != expected:
                differ = sorted(key for key in expected if found[key] != expected[key])
                raise ValueError(f"cache_dir {folder} holds activations of another run (differs in {differ}); "
                                 f"use another folder, or delete this one to rebuild it")
            return manifest["shards"]
        for stale in folder.glob("*shard_*.safetensors*"):  # an interrupted fill: start again
            stale.unlink()
        shards: list[dict] = []
        pending: list[dict[str, torch.Tensor]] = []

        def write() -> None:
            file = f"shard_{len(shards):05d}.safetensors"
            tmp = folder / f".{file}.tmp"
            save_file({key: torch.cat([c[key] for c in pending]).contiguous().cpu() for key in pending[0]}, str(tmp))
            os.replace(tmp, folder / file)
            shards.append({"file": file, "n_tokens": sum(len(c["prompt"]) for c in pending)})
            pending.clear()

        for chunk in self._model_chunks(torch.arange(len(self.tokens)), "caching activations"):
            pending.append(chunk)
            if sum(len(c["prompt"]) for c in pending) >= self.shard_tokens:
                write()
        if pending:
            write()
        self._write_manifest({**expected, "n_tokens": self.n_tokens, "shards": shards})
        return shards

    def _read_shard(self, shard: dict) -> dict[str, torch.Tensor]:
        path = self.cache_dir / shard["file"]
        try:
            data = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"activation shard {path} is missing or damaged ({e}); delete {self.cache_dir} "
                             f"to rebuild the cache") from None
        if len(data.get("prompt", ())) != shard["n_tokens"] or set(self.names) - set(data):
            raise ValueError(f"activation shard {path} does not hold what {MANIFEST} says; delete {self.cache_dir} "
                             f"to rebuild the cache")
        return {key: (t.to(self.device) if key in self.names else t) for key, t in data.items()}
