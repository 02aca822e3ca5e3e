"""Speed and memory benchmarks of vit_jax against independent PyTorch implementations (see benchmarks/README.md)."""
