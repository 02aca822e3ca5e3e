"""Training configs: one file per model and recipe, run as `python -m vit_jax.main --config=configs/NAME.py[:ARG]`.

A package, so that configs share code by importing each other (`from configs import common, vit_b16`).
`vit_jax.config_utils.load` imports a config file inside this folder as `configs.NAME`, from any working directory.
configs/common.py holds the `:arg` parser (`common.parse_arg`) and the recipes several configs share.
"""
