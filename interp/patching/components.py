"""What a patching sweep can patch, and the axes of its result (torch-free: the command line
offers these names without loading the engine)."""

# component -> (what it patches, axes per_position=False, axes per_position=True)
COMPONENTS = {
    "resid_pre": ("residual stream entering each block", ("layer",), ("layer", "pos")),
    "resid_mid": ("residual stream between attention and MLP", ("layer",), ("layer", "pos")),
    "attn_out": ("attention layer output", ("layer",), ("layer", "pos")),
    "mlp_in": ("the MLP's input only (the residual stream that skips the MLP unchanged)", ("layer",), ("layer", "pos")),
    "mlp_out": ("MLP output", ("layer",), ("layer", "pos")),
    "z": ("each head's output (hook_z, before W_O)", ("layer", "head"), ("layer", "pos", "head")),
    "q": ("each head's queries", ("layer", "head"), ("layer", "pos", "head")),
    "k": ("each key/value head's keys", ("layer", "head"), ("layer", "pos", "head")),
    "v": ("each key/value head's values", ("layer", "head"), ("layer", "pos", "head")),
    "pattern": ("each head's attention pattern", ("layer", "head"), ("layer", "head", "dest_pos")),
}
HEAD_COMPONENTS = ("z", "q", "k", "v", "pattern")
