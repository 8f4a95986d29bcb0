"""Analyses of attention heads; each module takes a HookedModel and returns a result object."""
