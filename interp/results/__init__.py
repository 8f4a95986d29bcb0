"""Result bundles, the `Result` base of every analysis result, and the analysis registry.

A bundle is one run of one analysis saved as one folder: meta.json (analysis, model, task,
parameters, seed, library version, UTC creation time and a manifest of its files), tables as
parquet, tensors as safetensors (older bundles may also hold figures as plotly JSON);
`interp.results.layout` documents the layout. Bundles are written atomically and never
overwritten; the dashboard and notebooks read them only through this package::

    path = write_bundle("runs", meta={"analysis": "heads", "model": "zoo/induction-2l", "seed": 0},
                        tables={"scores": frame}, tensors={"pattern": pattern})
    bundle = read_bundle(path)
    bundle.table("scores"), bundle.tensor("pattern")
    for entry in list_bundles("runs"):  # newest first; unreadable folders carry .error
        ...

Every analysis result subclasses `Result` (`save`, `to_frame`, `figure`, written once) and
is registered once in `interp.results.registry`, from which the command line, the demo and
the dashboard are built. Nothing here imports torch.
"""

from interp.results.base import Meta, Result
from interp.results.config import Config, option
from interp.results.read import Bundle, BundleEntry, BundleError, list_bundles, read_bundle
from interp.results.write import write_bundle

__all__ = ["Bundle", "BundleEntry", "BundleError", "Config", "Meta", "Result", "list_bundles", "option",
           "read_bundle", "write_bundle"]
