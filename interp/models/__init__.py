"""The model layer: `load_model` -> `HookedModel`, the vocabulary every analysis speaks.

Sites (`interp.models.sites`) name activations; interventions
(`interp.models.interventions`) change them; architecture descriptions
(`interp.models.architectures`) state what differs between model families; backends run
the model. Nothing outside this package imports TransformerLens or touches a backend.
"""

from ..zoo.registry import list_models
from . import interventions, sites
from .architectures import Architecture, UnsupportedArchitecture
from .cache import Cache
from .config import ModelConfig
from .hooked import Collected, HookedModel
from .interventions import Add, Intervention, Mean, Patch, Scale, Splice, Zero
from .loading import ParityError, load_model
from .sites import Site

__all__ = ["Add", "Architecture", "Cache", "Collected", "HookedModel", "Intervention", "Mean", "ModelConfig",
           "ParityError", "Patch", "Scale", "Site", "Splice", "UnsupportedArchitecture", "Zero", "interventions",
           "list_models", "load_model", "sites"]
