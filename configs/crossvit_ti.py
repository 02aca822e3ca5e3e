"""CrossViT-Ti: the CrossViT recipes of configs/crossvit_s.py for this size (arguments, figures: see there).

    python -m vit_jax.main --config=configs/crossvit_ti.py[:imagenet384|cifar10|cifar100|digits] --workdir=DIR
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location('_vit_jax_crossvit_s',
                                               os.path.join(os.path.dirname(__file__), 'crossvit_s.py'))
_crossvit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crossvit)


def get_config(arg=None):
    return _crossvit.get_crossvit_config('CrossViT-Ti', arg)
