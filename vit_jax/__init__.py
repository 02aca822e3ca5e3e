"""vit_jax: Vision Transformers and the papers built on them, in JAX/Flax."""

__version__ = '0.1.0'
