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
    from circuits.tasks import TASKS

    from .models import load_model
    from .patching import attribution_patch, patch

    model = load_model(args.model, device=args.device)
    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; tasks: {', '.join(TASKS)}")
    options = {"n": args.n, "seed": args.seed}
    if args.template:
        options["template"] = args.template
    task = TASKS[args.task](model, **options)
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
    from analyses.maps import maps_scores

    from .models import load_model

    model = load_model(args.model, device=args.device)
    salient = [tuple(int(x) for x in h.split(".")) for h in args.salient]
    result = maps_scores(model, args.relations or None, embedding=args.embedding, salient_heads=salient,
                         progress=not args.quiet)
    frame = result.to_frame()
    best = frame.loc[frame.groupby("relation")["score"].idxmax()].sort_values("score", ascending=False)
    print(best[["relation", "layer", "head", "score"]].head(10).to_string(index=False))
    print(f"bundle: {result.save(args.out)}")


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

    result = attribution_compare(load_model(args.model, device=args.device), blank_out=args.blank_out,
                                 progress=not args.quiet)
    print(result.table().round(2).to_string())
    print(f"bundle: {result.save(args.out)}")


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
    _common(p)
    p.set_defaults(run=_maps)

    for name, what in (("rollout", "attention rollout"), ("flow", "attention flow (max-flow)")):
        p = commands.add_parser(name, help=f"{what} over the tokens of the given texts")
        p.add_argument("model")
        p.add_argument("--text", action="append", required=True, help="a prompt (repeat for several)")
        _common(p)
        p.set_defaults(run=_attention_maps)

    p = commands.add_parser("attribution-compare",
                            help="raw attention, rollout and flow vs blank-out and gradient importance (Abnar & Zuidema, Table 1)")
    p.add_argument("model", nargs="?", default="minilm")
    p.add_argument("--blank-out", choices=["drop", "abs"], default="drop")
    _common(p)
    p.set_defaults(run=_attribution_compare)
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
