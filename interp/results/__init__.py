"""Result bundles: one run of one analysis saved as one folder.

A bundle holds meta.json (analysis, model, task, parameters, seed, library version, UTC
creation time and a manifest of its files), tables as parquet, tensors as safetensors and
figures as plotly JSON; `interp.results.layout` documents the layout. Bundles are written
atomically and never overwritten; the dashboard and notebooks read them only through this
package::

    path = write_bundle("runs", meta={"analysis": "heads", "model": "zoo/induction-2l", "seed": 0},
                        tables={"scores": frame}, tensors={"pattern": pattern})
    bundle = read_bundle(path)
    bundle.table("scores"), bundle.tensor("pattern")
    for entry in list_bundles("runs"):  # newest first; unreadable folders carry .error
        ...
"""

from interp.results.read import Bundle, BundleEntry, BundleError, list_bundles, read_bundle
from interp.results.write import write_bundle

__all__ = ["Bundle", "BundleEntry", "BundleError", "list_bundles", "read_bundle", "write_bundle"]
