"""`headlab`: the command line. Every analysis command is generated from the analysis registry
(`app.registry`): its name, help, options (one per config field, with the field's type,
default, help and choices), the task options when it takes a task, and the common options.
Each writes one result bundle to `--out`.

    headlab --help
    headlab heads zoo/ioi-small --out runs/
    headlab patch zoo/ioi-small --task ioi --component z --per-position --template when-went
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.registry import analyses, tasks
from interp.results.config import FieldSpec, field_specs
from interp.results.registry import Analysis, build_task, run_analysis, top_heads

COMMON = ("out", "device", "quiet", "threads", "task", "n", "template", "task_seed", "model")
TOP_HEADS = 3  # heads printed per per-head metric after a run
SMALL_TABLE = 20  # tables of at most this many rows are printed in full after a run


def _models(args: argparse.Namespace) -> None:
    from interp.zoo import DEFAULT_MODEL, list_models

    for name, description in list_models().items():
        default = "  (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:20s} {description}{default}")


def _head(text: str) -> tuple[int, int]:
    """A head written L.H, e.g. 5.7."""
    layer, dot, head = text.partition(".")
    if not (dot and layer.isdigit() and head.isdigit()):
        raise argparse.ArgumentTypeError(f"a head is written LAYER.HEAD, e.g. 5.7; got {text!r}")
    return int(layer), int(head)


def _add_option(parser: argparse.ArgumentParser, spec: FieldSpec) -> None:
    if spec.name in COMMON:
        raise ValueError(f"config field {spec.name!r} clashes with a common option of every command; rename it")
    shown = " ".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
    said = "default" in spec.help or spec.default is None or spec.default == ()
    help_text = (spec.help if said else f"{spec.help} (default: {shown})").replace("%", "%%")
    if spec.base is bool and not spec.many:
        parser.add_argument(spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=spec.default,
                            help=help_text)
        return
    kwargs = {"type": _head if spec.base == "head" else spec.base, "default": spec.default, "dest": spec.name,
              "help": help_text}
    if spec.many:
        kwargs["nargs"] = "+" if spec.min_items else "*"
    if spec.choices is not None:
        kwargs["choices"] = spec.choices
    if spec.base == "head":
        kwargs["metavar"] = "L.H"
    parser.add_argument(spec.flag, **kwargs)


def _add_analysis(commands, analysis: Analysis) -> None:
    p = commands.add_parser(analysis.command[-1], help=analysis.summary, allow_abbrev=False,
                            description=f"{analysis.summary}. {analysis.how_to_read}")
    p.add_argument("model", help="embedded name (see `headlab models`), local Hugging Face folder, or hub name")
    if analysis.task is not None:
        names = [t.name for t in tasks() if t.pairs or not analysis.task.pairs]
        p.add_argument("--task", choices=names, default=analysis.task.default,
                       required=analysis.task.required and analysis.task.default is None,
                       help=f"the task (default: {analysis.task.default or 'none'}); "
                            + "; ".join(f"{t.name}: {t.summary}" for t in tasks() if t.name in names))
        p.add_argument("--n", type=int, default=None, help="prompts of the task (default: the task's own)")
        p.add_argument("--template", default=None, help="one template of the task, so that positions align")
        p.add_argument("--task-seed", type=int, default=None, help="seed of the task's prompts (default: the task's)")
    for spec in field_specs(analysis.config):
        _add_option(p, spec)
    _common(p)
    p.set_defaults(run=lambda args: _run(analysis, args))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs"), help="folder of result bundles (default: runs/)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run(analysis: Analysis, args: argparse.Namespace) -> None:
    options = {spec.name: getattr(args, spec.name) for spec in field_specs(analysis.config)}
    if options.get("sae") == "latest":
        options["sae"] = str(_latest_sae(args.out, args.model))
    config = analysis.config(**options)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    from interp.models import load_model

    model = load_model(args.model, device=args.device)
    task = None
    if analysis.task is not None and args.task is not None:
        task = build_task(args.task, model, n=args.n, seed=args.task_seed, template=args.template)
    result = run_analysis(analysis, model, config, task, progress=not args.quiet)
    path = result.save(args.out)
    _summary(analysis, result)
    print(f"bundle: {path}")


def _latest_sae(runs: Path, model: str) -> Path:
    """The newest readable `sae train` bundle of `model` in `runs` (what `--sae latest` means)."""
    from interp.results import list_bundles

    entries = list_bundles(runs) if runs.is_dir() else []
    found = [e.path for e in entries if e.ok and e.bundle.meta["analysis"] == "sae-train"
             and e.bundle.meta["model"] == model]
    if not found:
        raise FileNotFoundError(f"--sae latest: no sae train bundle of {model} in {runs}; train one with "
                                f"`headlab sae train {model} --out {runs}` or give --sae PATH")
    return found[0]


def _summary(analysis: Analysis, result) -> None:
    """The top heads of each per-head metric, or else the first rows of the main table."""
    tables, meta = result.tables(), result.bundle_meta()
    printed = False
    for metric in analysis.head_metrics:
        for label, values in metric.values(tables, meta):
            top = top_heads(values, metric.scale, TOP_HEADS)
            heads = ", ".join(f"L{r.layer}H{r.head} {r.value:.3g}" for r in top.itertuples())
            print(f"{label}: {heads}")
            printed = True
    if not printed:  # the main table's first rows, and every small table in full
        for name, table in tables.items():
            if name == analysis.tables[0].name or len(table) <= SMALL_TABLE:
                print(f"{name}:\n{(table if len(table) <= SMALL_TABLE else table.head(8)).to_string(index=False)}")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headlab", description="Mechanistic interpretability of transformer attention heads.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser("models", help="list the embedded models (offline, ship with the package)")
    p.set_defaults(run=_models)
    groups: dict[str, argparse._SubParsersAction] = {}
    for analysis in analyses():
        if analysis.group is None:
            _add_analysis(commands, analysis)
            continue
        if analysis.group not in groups:
            members = [a.command[-1] for a in analyses() if a.group == analysis.group]
            group = commands.add_parser(analysis.group, help=f"{analysis.group} commands: {', '.join(members)}")
            groups[analysis.group] = group.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
        _add_analysis(groups[analysis.group], analysis)

    p = commands.add_parser("dashboard", help="serve the local dashboard over a folder of result bundles")
    p.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="folder of result bundles, e.g. runs/")
    _serving(p)
    p.set_defaults(run=_dashboard)

    p = commands.add_parser("demo", help="run every analysis's demo steps on the embedded models into --out, "
                                         "then serve the dashboard")
    p.add_argument("--out", type=Path, default=Path("runs"), help="folder of result bundles (default: runs/)")
    p.add_argument("--no-serve", action="store_true", help="only run the analyses (for CI and scripts)")
    _serving(p)
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, IndexError, KeyError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        command = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
        print(f"headlab {command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
