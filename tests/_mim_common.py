"""Shared by the slow PeCo and MILAN pipeline tests: the label-scarce fine-tune vs scratch comparison.

Both configs define `:digits_finetune` and `:digits_scratch`: exactly the same classifier recipe on the labels of 10%
of the training digits; the fine-tune starts from the pretraining's weights (`init_from.path`), scratch from a random
init. Both are evaluated on the 360 held-out test digits.
"""

from __future__ import annotations

import json
import os

from vit_jax import config_utils, train


def metrics_rows(workdir: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def finetune_vs_scratch(config_file: str, pretrain_dir: str, tmp, seeds=(0,)) -> dict[str, list[float]]:
    """Trains `config_file:digits_finetune` (from `pretrain_dir`) and `:digits_scratch` once per seed.

    Returns {'digits_finetune': [test accuracy per seed], 'digits_scratch': [...]}; the seed sets the classifier's
    init, data order and augmentation (the pretraining is the same for every fine-tune).
    """
    accuracy = {'digits_finetune': [], 'digits_scratch': []}
    for seed in seeds:
        for arg in accuracy:
            c = config_utils.load(f'{config_file}:{arg}')
            c.seed = seed
            if arg == 'digits_finetune':
                c.init_from.path = pretrain_dir
            accuracy[arg].append(train.train_and_evaluate(c, str(tmp / f'{arg}_seed{seed}'))['val/accuracy'])
    print(config_file, 'fine-tuned', accuracy['digits_finetune'], 'scratch', accuracy['digits_scratch'])
    return accuracy
