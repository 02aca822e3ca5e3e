"""Quickstart for Dynamic Token Normalization: the paper's ConViT-style ViT with DTN, on the built-in UCI digits.

    python -m vit_jax.main --config=configs/quickstart_dtn.py --workdir=workdirs/quickstart_dtn
    python -m vit_jax.main --config=configs/quickstart_dtn.py:layernorm --workdir=workdirs/quickstart_dtn_ln

A 4-layer DTN-ViT-T* shrunk to width 64 on the native 8x8 digits (2x2 patches: a 4x4 grid): DTN (4 heads) in both
norms of the first 3 blocks on the patch tokens, then the class token joins and the last block uses LayerNorm. No
augmentation: random shifts of a 4x4-token grid with a learned position embedding slow this network down a lot in
short runs. The argument
`layernorm` trains the same network with LayerNorm everywhere (the paper's baseline); add `,tiny` for the few-step
version the tests run. Recipe: AdamW, cosine with warm-up, label smoothing 0.1 (the paper's family, scaled down).
Figures measured here are in the README (DTN section).
"""

from configs import common


def get_config(arg=None):
    arg = common.parse_arg(arg, norm=common.OneOf('dtn', ('dtn', 'layernorm')), tiny=False)
    tiny = arg.tiny  # For tests: a narrower model, a short run.
    # Tiny: 600 steps, as the DeiT-style N(0, 0.02) init learns slower than the release's in short runs.
    c = common.digits_recipe(dict(name='DTN-ViT-T*', image_size=8, patch_size=2, hidden_size=64, num_heads=4,
                                  num_layers=4, local_up_to_layer=3, norm=arg.norm, drop_path_rate=0.0),
                             train_pp='resize', steps=600 if tiny else 1500, warmup_steps=20 if tiny else 100,
                             tiny=tiny)
    if tiny:
        c.model.hidden_size = 32
        c.model.num_layers = 3
        c.model.local_up_to_layer = 2
        c.log_every = 100
    return c
