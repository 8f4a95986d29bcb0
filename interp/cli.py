"""`headlab`: the command line. Each analysis command writes a result bundle to `--out`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _models(args: argparse.Namespace) -> None:
    from .zoo import DEFAULT_MODEL, list_models

    for name, description in list_models().items():
        default = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:20s} {description}{default}")


def _heads(args: argparse.Namespace) -> None:
    from analyses.heads import detect_heads

    from .models import load_model

    model = load_model(args.model, device=args.device)
    scores = detect_heads(model, n_sequences=args.n_sequences, span=args.span, seed=args.seed,
                          progress=not args.quiet)
    path = scores.save(args.out)
    frame = scores.to_frame()
    for kind, group in frame.groupby("kind", sort=False):
        best = group.loc[group["score"].idxmax()]
        print(f"{kind:16s} top head L{int(best['layer'])}H{int(best['head'])}  score {best['score']:.3f}")
    print(f"bundle: {path}")


def _patch(args: argparse.Namespace) -> None:
    from .models import load_model
    from .patching import attribution_patch, patch

    model = load_model(args.model, device=args.device)
    options = {"n": args.n, "seed": args.seed}
    if args.template:
        options["template"] = args.template
    task = _task(args.task, model, **options)
    kwargs = {"per_position": args.per_position, "direction": args.direction}
    if args.method == "exact":
        result = patch(model, task, args.component, memory_budget=args.memory_budget, progress=not args.quiet, **kwargs)
    else:
        result = attribution_patch(model, task, args.component, attention_fix=args.method == "atp*", **kwargs)
    path = result.save(args.out)
    top = result.to_frame().assign(size=lambda f: (f["value"] - (0 if args.direction == "denoise" else 1)).abs())
    print(f"clean metric {result.clean_metric:.3f}, corrupted {result.corrupt_metric:.3f}; largest effects:")
    print(top.nlargest(5, "size").drop(columns="size").to_string(index=False))
    print(f"bundle: {path}")


def _maps(args: argparse.Namespace) -> None:
    from analyses.maps import (DEFAULT_TEMPLATES, causal_validation, copying_relation, dynamic_validation,
                               load_relations, maps_scores)

    from .models import load_model

    model = load_model(args.model, device=args.device)
    if args.causal is not None and not (model.cfg.is_causal and model.cfg.has_lm_head):
        raise ValueError(f"--causal needs a causal language model; {model.cfg.name} is an encoder "
                         f"(--validate works for encoders)")
    relations = load_relations(model.tokenizer, args.relations or (None if not args.vocab_copying else []))
    if args.vocab_copying:
        relations += [r for r in [copying_relation(model.tokenizer)] if r is not None]
    salient = [tuple(int(x) for x in h.split(".")) for h in args.salient]
    result = maps_scores(model, relations, embedding=args.embedding, salient_heads=salient, progress=not args.quiet)
    frame = result.to_frame()
    best = frame.loc[frame.groupby("relation")["score"].idxmax()].sort_values("score", ascending=False)
    print(best[["relation", "layer", "head", "score"]].head(10).to_string(index=False))
    print(f"bundle: {result.save(args.out)}")
    common = {"embedding": args.embedding, "max_pairs": args.max_pairs, "progress": not args.quiet}
    if args.validate:
        dynamic = dynamic_validation(model, relations, templates=args.template or DEFAULT_TEMPLATES, **common)
        print(dynamic.to_frame().round(3).to_string(index=False))
        print(f"bundle: {dynamic.save(args.out)}")
    if args.causal is not None:
        causal = causal_validation(model, relations, args.causal_template or None, m=args.causal, n_random=args.n_random,
                                   ablation=args.ablation, **common)
        print(causal.to_frame().round(3).to_string(index=False))
        print(f"bundle: {causal.save(args.out)}")


def _attention_maps(args: argparse.Namespace) -> None:
    from analyses.flow import attention_flow
    from analyses.rollout import attention_rollout

    from .models import load_model

    model = load_model(args.model, device=args.device)
    if args.command == "rollout":
        result = attention_rollout(model, args.text)
    else:
        result = attention_flow(model, args.text, progress=not args.quiet)
    print(f"bundle: {result.save(args.out)}")


def _attribution_compare(args: argparse.Namespace) -> None:
    from analyses.attribution_compare import attribution_compare

    from .models import load_model

    model = load_model(args.model, device=args.device)
    texts = None
    if args.task:
        texts = _task(args.task, model, n=args.n, seed=args.seed).clean_prompts
    result = attribution_compare(model, texts, blank_out=args.blank_out, gradient=args.gradient, progress=not args.quiet)
    print(result.table().round(2).to_string())
    print(f"bundle: {result.save(args.out)}")


def _dashboard(args: argparse.Namespace) -> None:
    from app.server import serve  # deferred: dash is not needed by the other commands

    serve(args.runs_dir, host=args.host, port=args.port)


def _demo(args: argparse.Namespace) -> None:
    from app.demo import demo

    failed = demo(args.out, serve=not args.no_serve, host=args.host, port=args.port)
    if failed:
        raise SystemExit(1)


def _serving(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8050, help="port (default: 8050; 0 picks a free one)")


def _sinks(args: argparse.Namespace) -> None:
    from analyses.heads import random_prompts
    from analyses.sinks import sink_analysis

    from .models import load_model

    model = load_model(args.model, device=args.device)
    prompts = args.text or random_prompts(model, args.n, args.length, seed=args.seed)
    result = sink_analysis(model, prompts, epsilon=args.epsilon)
    rates = result.summary()
    print(f"sink rate at key 0 ({rates['token'][0] or 'mixed'}): {result.rate_at(0):.1f}% of heads; "
          f"at the last token: {result.rate_at(-1):.1f}%; frame: {result.model_frame}; "
          f"massive activations: {len(result.massive)}")
    print(f"bundle: {result.save(args.out)}")


def _prune(args: argparse.Namespace) -> None:
    from analyses.pruning import next_token_task, pruning_curve

    from .models import load_model

    model = load_model(args.model, device=args.device)
    if args.task == "sentence-pairs":
        from analyses.sentence_pairs import sentence_pair_task

        task = sentence_pair_task(model)
    else:
        task = next_token_task(_task(args.task, model, n=args.n, seed=args.seed), metric=args.metric)
    result = pruning_curve(model, task, step=args.step, orders=args.orders, n_random=args.n_random,
                           seed=args.seed, progress=not args.quiet)
    print(result.to_frame().pivot(index="fraction", columns="order", values="metric").round(3).to_string())
    for order in result.orders:
        print(f"{order}: up to {result.largest_fraction_within(0.05, order):.0%} of heads pruned within 5% "
              f"of the unpruned {task.metric_name}")
    print(f"bundle: {result.save(args.out)}")


def _patterns(args: argparse.Namespace) -> None:
    from analyses.head_patterns import head_patterns

    from .models import load_model

    result = head_patterns(load_model(args.model, device=args.device), args.text or None)
    top = result.circuits.sort_values("ov_copying", ascending=False).head(3)
    print("highest OV copying scores: " + ", ".join(f"L{r.layer}H{r.head} {r.ov_copying:.2f}" for r in top.itertuples()))
    print(f"bundle: {result.save(args.out)}")


def _task(name: str, model, **options):
    """A patching task of `circuits.tasks` by name (clean/corrupted prompts with answers)."""
    from circuits.tasks import TASKS

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name](model, **options)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs"), help="folder of result bundles (default: runs/)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headlab", description="Mechanistic interpretability of transformer attention heads.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("models", help="list the embedded models (offline, ship with the package)")
    p.set_defaults(run=_models)

    p = commands.add_parser("heads", help="previous-token, induction and duplicate-token scores of every head")
    p.add_argument("model", help="embedded name (see `headlab models`), local Hugging Face folder, or hub name")
    p.add_argument("--n-sequences", type=int, default=64, help="probe sequences (default: 64)")
    p.add_argument("--span", type=int, default=16, help="length of the repeated random span (default: 16)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(run=_heads)

    p = commands.add_parser("patch", help="activation patching sweep of one component over a task")
    p.add_argument("model", help="embedded name, local Hugging Face folder, or hub name")
    p.add_argument("--task", default="ioi", help="ioi, colored-objects or induction (default: ioi)")
    p.add_argument("--component", default="z", help="resid_pre, resid_mid, attn_out, mlp_out, z, q, k, v, pattern")
    p.add_argument("--per-position", action="store_true", help="patch one position at a time")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    p.add_argument("--method", default="exact", choices=["exact", "atp", "atp*"],
                   help="exact patching, or attribution patching (AtP / AtP*)")
    p.add_argument("--n", type=int, default=32, help="prompt pairs (default: 32)")
    p.add_argument("--template", default=None, help="one task template (positions then align across prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-budget", type=int, default=None, help="bytes for batched patched runs")
    _common(p)
    p.set_defaults(run=_patch)

    p = commands.add_parser("maps", help="MAPS: each head's relation scores from its parameters alone")
    p.add_argument("model")
    p.add_argument("--relations", nargs="*", default=[], help="relation names (default: all 20)")
    p.add_argument("--embedding", default="E", choices=["E", "mlp0"], help="source embedding (default: E)")
    p.add_argument("--salient", nargs="*", default=[], metavar="L.H", help="heads whose salient operations to list")
    p.add_argument("--vocab-copying", action="store_true",
                   help="add the relation vocab_copying (every vocabulary token -> itself; for small vocabularies "
                        "such as the zoo models'); alone, it replaces the default 20 relations")
    p.add_argument("--validate", action="store_true",
                   help="also compare static with dynamic scores (head outputs on templates, with and without context)")
    p.add_argument("--template", action="append", default=[], metavar="TEXT",
                   help='a --validate template with one {} for the source word (repeatable; default: '
                        '"This is a document about {}" and two more)')
    p.add_argument("--causal", type=int, default=None, metavar="M",
                   help="also ablate the top 1..M heads of each relation against M random heads (causal LMs only)")
    p.add_argument("--causal-template", action="append", default=[], metavar="TEXT",
                   help='a --causal prompt with one {} for the source, followed by the target (repeatable; '
                        'default: one built-in prompt per relation, analyses.maps.CAUSAL_TEMPLATES)')
    p.add_argument("--ablation", default="zero", choices=["zero", "mean"], help="--causal ablation (default: zero)")
    p.add_argument("--n-random", type=int, default=5, help="--causal random draws (default: 5)")
    p.add_argument("--max-pairs", type=int, default=None, help="validate on at most this many pairs per relation")
    _common(p)
    p.set_defaults(run=_maps)

    for name, what in (("rollout", "attention rollout"), ("flow", "attention flow (max-flow)")):
        p = commands.add_parser(name, help=f"{what} over the tokens of the given texts")
        p.add_argument("model")
        p.add_argument("--text", action="append", required=True, help="a prompt (repeat for several)")
        _common(p)
        p.set_defaults(run=_attention_maps)

    p = commands.add_parser("patterns", help="every head's attention on a few prompts, with QK/OV norms and OV copying scores")
    p.add_argument("model")
    p.add_argument("--text", action="append", default=[], help="a prompt (repeat, at most 8); default: 4 repeated-span probes")
    _common(p)
    p.set_defaults(run=_patterns)

    p = commands.add_parser("sinks", help="attention sinks: sink rate per key position, massive activations, frames")
    p.add_argument("model")
    p.add_argument("--text", action="append", default=[], help="a prompt (repeat); default: random-token prompts")
    p.add_argument("--n", type=int, default=32, help="random prompts when no --text (default: 32)")
    p.add_argument("--length", type=int, default=None,
                   help="tokens per random prompt besides BOS/CLS/SEP (default: 63, or what the context allows)")
    p.add_argument("--epsilon", type=float, default=0.3, help="sink threshold on mean attention (default: 0.3)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(run=_sinks)

    p = commands.add_parser("prune", help="head importance (Michel et al.) and pruning curves")
    p.add_argument("model")
    p.add_argument("--task", default="ioi", help="ioi, colored-objects, induction (next-token tasks) or sentence-pairs (encoders)")
    p.add_argument("--metric", default="logit_diff", choices=["logit_diff", "accuracy"], help="for next-token tasks")
    p.add_argument("--n", type=int, default=64, help="prompts of a next-token task (default: 64)")
    p.add_argument("--step", type=float, default=0.1, help="fraction of all heads pruned per step (default: 0.1)")
    p.add_argument("--orders", nargs="+", default=["once", "exact", "random"], help="once, exact, random")
    p.add_argument("--n-random", type=int, default=3, help="random orders averaged (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(run=_prune)

    p = commands.add_parser("attribution-compare",
                            help="raw attention, rollout and flow vs blank-out and gradient importance (Abnar & Zuidema, Table 1)")
    p.add_argument("model", nargs="?", default="minilm")
    p.add_argument("--blank-out", choices=["drop", "abs"], default="drop")
    p.add_argument("--gradient", choices=["sum", "norm"], default="sum",
                   help="input-gradient importance: the paper's |sum over dims| (default; refused for pre-LayerNorm "
                        "models such as GPT-2, where it is 0) or the gradient's L2 norm")
    p.add_argument("--task", default=None,
                   help="take the prompts from a task's clean prompts (e.g. ioi for zoo/ioi-small); default: 120 topic sentences")
    p.add_argument("--n", type=int, default=120, help="prompts from --task (default: 120)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(run=_attribution_compare)

    p = commands.add_parser("dashboard", help="serve the local dashboard over a folder of result bundles")
    p.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="folder of result bundles, e.g. runs/")
    _serving(p)
    p.set_defaults(run=_dashboard)

    p = commands.add_parser("demo", help="run every analysis on the embedded models into --out, then serve the dashboard")
    p.add_argument("--out", type=Path, default=Path("runs"), help="folder of result bundles (default: runs/)")
    p.add_argument("--no-serve", action="store_true", help="only run the analyses (for CI and scripts)")
    _serving(p)
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, IndexError, FileNotFoundError) as err:
        print(f"headlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
