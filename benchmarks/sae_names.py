"""Ground truth on zoo/ioi-small: how many of its 100 names get an SAE feature of their own.

    python benchmarks/sae_names.py                                  # TopK, resid_pre(2), full size
    python benchmarks/sae_names.py --site "resid_pre(1)" --arch standard --l1 5
    python benchmarks/sae_names.py --device cuda
    python benchmarks/sae_names.py --model /tmp/ioi-256      # another build of the recipe (recipes.ioi)

The corpus is the model's own training distribution: `circuits.tasks.ioi_data.training_text`
(answered IOI and colored-objects prompts and filler sentences, one per sequence; BOS first, as
the recipe trained it), `--texts` of them for training (seed 0) and `--eval-texts` others
(seed 1) for scoring. An SAE is trained on the site's activations (`analyses.sae.store`,
special tokens excluded, expected_average_only_in scaling folded afterwards), then for each name
the feature with the best F1 (`CorpusActivations.token_f1`): over the used tokens of the scoring
texts, a true positive is a token of that name where the feature is non-zero; F1 = 2 TP /
(tokens where the feature fires + tokens of the name). A name "has a feature" when F1 >= 0.9.
Printed: that count, the counts at 0.5 and 0.7, median F1 / precision / recall, the spliced CE
loss score, the run time (of the SAE's part), the share of the variance at name tokens that
the name's identity explains (the most an SAE's reconstruction gains there from latents of
single names), how many directions the names' mean activations span (`name_dimensions`) and,
unless `--no-probe`, the linear-probe bound: how many names a supervised linear classifier of
the site's activations singles out with F1 >= 0.9 (`probe_f1`), the ceiling for any SAE's count
at that site.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def name_f1(model, sae, texts, progress=False):
    """The best feature of each of the 100 names on `texts` (a DataFrame, see token_f1)."""
    from analyses.sae.features import sae_activations
    from circuits.tasks.ioi_data import NAMES

    ids = model.tokenizer.convert_tokens_to_ids(NAMES)
    acts = sae_activations(model, sae, texts, progress=progress)
    return acts.token_f1(dict(zip(NAMES, ids)))


def used_activations(store) -> tuple:
    """`(activations [n, d_in] float64, token ids [n])` of every used token of an
    `ActivationStore`'s corpus (special tokens and padding excluded), in corpus order."""
    return store.activations().double(), store.tokens[store.keep]


def name_means(x, ids, name_ids: list[int]) -> tuple:
    """`(mean activation of each name [len(name_ids), d], its token count [len(name_ids)])` over
    the activations `x [n, d]` of the tokens `ids [n]`; refuses a name with no token there (its
    mean would be NaN)."""
    import torch

    counts = torch.stack([(ids == name).sum() for name in name_ids])
    if (counts == 0).any():
        absent = [name for name, count in zip(name_ids, counts) if count == 0]
        raise ValueError(f"token ids {absent[:10]} never occur in the scored texts: too few --eval-texts")
    return torch.stack([x[ids == name].mean(0) for name in name_ids]), counts


def name_variance_share(x, ids, name_ids: list[int]) -> float:
    """How much of the variance of the activations `x [n, d]` at name tokens (`name_ids`) the
    name's identity explains (between-name sum of squares / total sum of squares; `ids [n]` the
    tokens). An SAE gains that share of those tokens' variance, no more, from spending latents
    on single names."""
    import torch

    names = torch.isin(ids, torch.tensor(name_ids))
    mean = x[names].mean(0)
    means, counts = name_means(x, ids, name_ids)
    between = (counts[:, None] * (means - mean).pow(2)).sum()
    return float(between / (x[names] - mean).pow(2).sum())


def name_dimensions(x, ids, name_ids: list[int]) -> tuple[int, float]:
    """How many directions the names use at a site: the names' mean activations (`name_means`),
    centred, then `(the number of principal directions holding 90% of their variance, its
    participation ratio (sum l)^2 / sum l^2)`. Few directions for many names means a shared
    code: no direction of one name alone."""
    import torch

    means, _ = name_means(x, ids, name_ids)
    spectrum = torch.linalg.svdvals(means - means.mean(0)) ** 2
    share = spectrum.cumsum(0) / spectrum.sum()
    return int((share < 0.9).sum()) + 1, float(spectrum.sum() ** 2 / (spectrum ** 2).sum())


def probe_f1(train, held_out, name_ids: list[int]) -> list[float]:
    """The most any single linear feature of the site can do: for each name of `name_ids`, a logistic
    regression of "this token is that name" on the activations of `train` (x, ids), balanced
    classes, then the best F1 over thresholds of its score on `held_out` (x, ids). The threshold
    is chosen on the scored texts themselves, so this is an upper bound on an SAE feature's F1
    (a feature is a linear score cut at a threshold, up to TopK's competition), not a rival."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    absent = [name for name in name_ids if not (train[1] == name).any()]
    if absent:
        raise ValueError(f"token ids {absent} never occur in the training texts: too few --texts for the probe")
    mean, scale = train[0].mean(0), train[0].std(0) + 1e-6
    x_train, x_test = (((x - mean) / scale).numpy() for x in (train[0], held_out[0]))
    out = []
    for name in name_ids:
        is_name = (held_out[1] == name).numpy()
        clf = LogisticRegression(C=10.0, max_iter=1000, class_weight="balanced")
        score = clf.fit(x_train, (train[1] == name).numpy()).decision_function(x_test)
        hits = np.cumsum(is_name[np.argsort(-score)])  # true positives among the top 1, 2, ... scores
        out.append(float((2 * hits / (np.arange(1, len(score) + 1) + is_name.sum())).max()))
    return out


def ioi_texts(n: int, seed: int) -> list[str]:
    from circuits.tasks.ioi_data import training_text

    rng = random.Random(seed)
    return [training_text(rng)[0] for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo/ioi-small",
                        help="zoo/ioi-small or a folder built by its recipe (same tokenizer and names)")
    parser.add_argument("--site", default="resid_pre(2)")
    parser.add_argument("--arch", default="topk", choices=["topk", "batchtopk", "standard", "jumprelu"])
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--l1", type=float, default=5.0, help="l1_coefficient (standard) / l0_coefficient (jumprelu)")
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--eval-texts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the model runs and the SAE trains (cpu, cuda)")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear-probe bound (100 logistic regressions)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch

    from analyses.sae import make_sae
    from analyses.sae.evals import evaluate_spliced
    from analyses.sae.store import ActivationStore
    from analyses.sae.train import TrainConfig, train_saes_on_store
    from benchmarks.common import machine
    from interp import load_model

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    start = time.perf_counter()
    model = load_model(args.model, device=args.device)
    store = ActivationStore(model, ioi_texts(args.texts, 0), args.site, batch_size=args.batch,
                            cache_dir=args.cache_dir, progress=False)
    extra = {"topk": dict(k=args.k), "batchtopk": dict(k=args.k), "standard": dict(l1_coefficient=args.l1),
             "jumprelu": dict(l0_coefficient=args.l1)}[args.arch]
    sae = make_sae(args.arch, d_in=store.d_in[store.names[0]], d_sae=args.d_sae, **extra).to(args.device)
    cfg = TrainConfig(total_training_steps=args.steps, lr=args.lr, lr_decay_steps=args.steps // 5,
                      dead_feature_window=50 * args.batch)
    result = train_saes_on_store(sae, store, cfg, progress=False)
    held_out = ioi_texts(args.eval_texts, 1)
    table = name_f1(model, sae, held_out)
    spliced = evaluate_spliced(model, sae, held_out[:300], progress=False)
    elapsed = time.perf_counter() - start
    last = result.history[-1]
    print(f"model {args.model}, site {args.site}, {args.arch} d_sae {args.d_sae} "
          f"{'k ' + str(args.k) if 'topk' in args.arch else 'coefficient ' + str(args.l1)}, {args.steps} steps of "
          f"{args.batch} tokens ({store.n_tokens} tokens per epoch), lr {args.lr}")
    print(f"training: explained variance {last['explained_variance']:.3f}, L0 {last['l0']:.1f}; held out: "
          f"explained variance {spliced.explained_variance:.3f}, L0 {spliced.metrics.l0:.1f}, "
          f"ce_loss_score {spliced.ce_loss_score:.3f}, delta LM loss {spliced.delta_lm_loss:.4f}")
    print(f"names with a feature of F1 >= 0.9: {int((table['f1'] >= 0.9).sum())} of {len(table)} "
          f"(>= 0.7: {int((table['f1'] >= 0.7).sum())}, >= 0.5: {int((table['f1'] >= 0.5).sum())}); "
          f"median F1 {table['f1'].median():.3f}, precision {table['precision'].median():.3f}, "
          f"recall {table['recall'].median():.3f}; distinct best features {table['feature'].nunique()}")
    print(table.sort_values("f1", ascending=False).head(10).to_string(index=False))
    print(f"time {elapsed:.0f} s")
    name_ids = model.tokenizer.convert_tokens_to_ids(list(table["group"]))
    scored = used_activations(ActivationStore(model, held_out, args.site, progress=False))
    print(f"share of the variance at name tokens that the name explains: {name_variance_share(*scored, name_ids):.3f}")
    dims, ratio = name_dimensions(*scored, name_ids)
    print(f"directions holding 90% of the between-name variance: {dims} (participation ratio {ratio:.1f})")
    if not args.no_probe:
        bound = probe_f1(used_activations(store), scored, name_ids)
        print(f"linear-probe bound: names that any linear feature of this site could single out with F1 >= 0.9: "
              f"{sum(f >= 0.9 for f in bound)} of {len(bound)} (>= 0.7: {sum(f >= 0.7 for f in bound)}); median "
              f"{sorted(bound)[len(bound) // 2]:.3f}")


if __name__ == "__main__":
    main()
