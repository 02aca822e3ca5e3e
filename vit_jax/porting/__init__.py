"""Weight porting: official PyTorch checkpoints, HuggingFace and timm layouts in; HuggingFace and timm layouts out.

`vit_jax.convert` re-exports the public API:

    variables = convert.from_official('cct', state_dict, model)   # an official checkpoint's state dict
    convert.official_families()                                    # the layouts it knows

`models/` is pure architecture: every conversion lives here, one module per family.
"""

from vit_jax.porting.registry import (  # noqa: F401
                                      ConversionError,
                                      StateDict,
                                      check_variables,
                                      from_official,
                                      official,
                                      official_families,
                                      unwrap,
)
