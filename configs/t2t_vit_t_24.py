"""T2T-ViT_t-24: the T2T-ViT recipes of configs/t2t_vit_14.py for this size (arguments, figures: see there).

    python -m vit_jax.main --config=configs/t2t_vit_t_24.py[:imagenet384|cifar10|cifar100|digits] --workdir=DIR
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location('_vit_jax_t2t_vit_14',
                                               os.path.join(os.path.dirname(__file__), 't2t_vit_14.py'))
_t2t = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_t2t)


def get_config(arg=None):
    return _t2t.get_t2t_config('T2T-ViT_t-24', arg)
