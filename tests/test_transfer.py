"""Transfer: the fine-tuning configs, VTAB-1k tasks and sweep, and fine-tuning from an earlier run's checkpoint."""

import json
import os

import numpy as np
import pytest
from _helpers import short_run
from PIL import Image

from vit_jax import checkpoint, config_utils, predict, train
from vit_jax.data import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFER_CONFIGS = ['vit_b16', 'vit_ti16', 'vit_s16', 'vit_b32', 'vit_l16', 'r50_vit_b16']


def _load(spec):
    return config_utils.load(os.path.join(REPO, spec))


# ----------------------------------------------------------------------------------------------------------------
# The paper's fine-tuning configs.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', TRANSFER_CONFIGS)
def test_transfer_configs_follow_the_paper_recipe(name):
    expected = {'cifar10': (10_000, 500, 10, 'train', 'test'), 'cifar100': (10_000, 500, 100, 'train', 'test'),
                'oxford_iiit_pet': (500, 100, 37, 'train', 'test'),
                'oxford_flowers102': (500, 100, 102, 'train+validation', 'test'),
                'imagenet2012': (20_000, 500, 1000, 'train', 'validation')}
    for ds, (steps, warmup, classes, train_split, eval_split) in expected.items():
        c = _load(f'configs/{name}.py:{ds}')
        config_utils.validate(c)
        assert c.dataset == ds and c.total_steps == steps and c.lr.warmup_steps == warmup
        assert c.model.num_classes == classes and c.model.image_size == 384
        assert c.data.train_split == train_split and c.evals.val.split == eval_split
        assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay, c.optimizer.grad_clip_norm) == (
            'sgd', 0.9, 0.0, 1.0)
        assert c.batch_size == 512 and c.lr.decay == 'cosine' and c.lr.end == 0.0
        assert c.data.train_pp == 'inception_crop' and c.data.eval_pp == 'resize' and c.data.flip
        assert tuple(c.init_from.dont_load) == ('head/.*', 'pre_logits/.*') and c.init_from.path is None
        hp = _load(f'configs/{name}.py:{ds},hp')
        assert hp.data.train_split != c.data.train_split and hp.evals.val.split.startswith('train')
    assert _load(f'configs/{name}.py:pets').dataset == 'oxford_iiit_pet'


def test_transfer_config_models_and_lr_grid():
    recipe = _load('configs/vit_b16.py')
    assert recipe.model.name == 'ViT-B/16'
    assert _load('configs/vit_l16.py:cifar10').model.dropout_rate == 0.1
    assert _load('configs/r50_vit_b16.py:cifar10').model.name == 'R50+ViT-B/16'
    import importlib.util

    spec = importlib.util.spec_from_file_location('vit_b16_cfg', os.path.join(REPO, 'configs', 'vit_b16.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.lr_grid('imagenet') == (0.003, 0.01, 0.03, 0.06)
    assert mod.lr_grid('cifar10') == (0.001, 0.003, 0.01, 0.03)
    with pytest.raises(ValueError, match='Unknown transfer dataset'):
        _load('configs/vit_b16.py:mnist')
    with pytest.raises(ValueError, match='Unknown option'):
        _load('configs/vit_b16.py:cifar10,fast')
    # Command-line style overrides reach the init_from section.
    c = _load('configs/vit_b16.py:cifar10')
    config_utils.override(c, 'init_from.path', '/x/ViT-B_16.npz')
    assert c.init_from.path == '/x/ViT-B_16.npz'


def _digits_folder(root, with_test=True, per_class=None, start=0):
    """The built-in digits as an image folder: root/{train,test}/<digit>/*.png (train from index `start` on)."""
    arrays = datasets.digits_arrays()
    for split in ('train', 'test') if with_test else ('train',):
        images, labels, _ = arrays[split]
        count = {}
        for i, (im, lbl) in enumerate(zip(images, labels)):
            if split == 'train' and (i < start or (per_class and count.get(lbl, 0) >= per_class)):
                continue
            count[lbl] = count.get(lbl, 0) + 1
            d = os.path.join(root, split, str(lbl))
            os.makedirs(d, exist_ok=True)
            Image.fromarray(im).save(os.path.join(d, f'{i:04d}.png'))
    return str(root)


def test_folder_config(tmp_path):
    root = _digits_folder(tmp_path / 'a', per_class=3)
    c = _load(f'configs/vit_b16.py:folder:{root}')
    assert c.dataset == f'folder:{root}' and c.model.num_classes == 10
    assert (c.data.train_split, c.evals.val.split, c.total_steps, c.lr.base) == ('train', 'test', 500, 0.01)
    assert _load(f'configs/vit_b16.py:folder:{root},hp').data.train_split == 'train[:90%]'
    root2 = _digits_folder(tmp_path / 'b', with_test=False, per_class=3)
    c2 = _load(f'configs/vit_b16.py:folder:{root2}')
    assert (c2.data.train_split, c2.evals.val.split) == ('train[:90%]', 'train[90%:]')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        _load(f'configs/vit_b16.py:folder:{tmp_path}/nowhere')


# ----------------------------------------------------------------------------------------------------------------
# VTAB-1k.
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def vtab():
    from experiments.vtab1k import config as vtab_config
    from experiments.vtab1k import run as vtab_run

    return vtab_config, vtab_config.load_tasks(), vtab_run


def test_vtab_tasks(vtab):
    import tensorflow_datasets as tfds

    vtab_config, tasks, _ = vtab
    assert len(tasks.TASKS) == 19 and len(tasks.TASKS_BY_NAME) == 19
    groups = [t.group for t in tasks.TASKS]
    assert (groups.count('natural'), groups.count('specialized'), groups.count('structured')) == (7, 4, 8)
    for t in tasks.TASKS:
        for split in (t.train800, t.val200, t.train800val200, t.test):
            tfds.core.ReadInstruction.from_spec(split)  # Valid TFDS split syntax.
        c = _load(f'experiments/vtab1k/config.py:{t.name}')
        config_utils.validate(c)
        assert c.dataset == f'vtab1k:{t.name}' and c.model.num_classes == t.num_classes
        assert c.data.train_split == t.train800val200 and c.evals.val.split == t.test
        assert (c.total_steps, c.lr.base, c.batch_size, c.model.image_size) == (2500, 0.01, 512, 384)
        hp = _load(f'experiments/vtab1k/config.py:{t.name},hp,lr=0.003,steps=100')
        assert hp.data.train_split == t.train800 and hp.evals.val.split == t.val200
        assert (hp.lr.base, hp.total_steps) == (0.003, 100)
    t = tasks.TASKS_BY_NAME['caltech101']
    assert (t.train800, t.val200, t.train800val200) == ('train[:800]', 'train[2754:2954]',
                                                        'train[:800]+train[2754:2954]')
    assert tasks.TASKS_BY_NAME['dtd'].val200 == 'validation[0:200]'
    assert tasks.TASKS_BY_NAME['smallnorb_ele'].val200 == 'test[0:200]'
    with pytest.raises(ValueError, match='Unknown VTAB-1k task'):
        _load('experiments/vtab1k/config.py:mnist')
    with pytest.raises(ValueError, match='Unknown option'):
        _load('experiments/vtab1k/config.py:dtd,fast')
    from vit_jax import data

    assert 'vtab1k:' in data.list_datasets()
    with pytest.raises(ValueError, match='Unknown VTAB-1k task'):
        data.dataset_info('vtab1k:mnist', 'train')


def test_vtab_derived_labels(vtab):
    import tensorflow as tf

    _, tasks, _ = vtab

    def label(task, ex):
        return int(tasks.example_fn(tasks.TASKS_BY_NAME[task])(ex)['label'].numpy())

    img = tf.constant(b'png bytes')
    clevr = {'image': img, 'objects': {'size': tf.zeros([5], tf.int64),
                                       'pixel_coords': tf.constant([[1., 2., 9.2], [3., 4., 8.7], [0., 0., 11.]])}}
    assert label('clevr_count', clevr) == 2  # 5 objects -> class 2 (3..10 objects -> 0..7).
    assert label('clevr_dist', clevr) == 2  # Closest depth 8.7 in (8.5, 9].
    kitti = {'image': img, 'objects': {'type': tf.constant([3, 0, 1]),
                                       'location': tf.constant([[0., 0., 5.], [0., 0., 15.], [0., 0., 30.]])}}
    assert label('kitti_dist', kitti) == 1  # The pedestrian (type 3) at 5 m is not a vehicle: closest car 15 m.
    kitti_none = {'image': img, 'objects': {'type': tf.constant([3, 4]), 'location': tf.zeros([2, 3])}}
    assert label('kitti_dist', kitti_none) == 3  # No vehicle.
    png = tf.io.encode_png(tf.ones([4, 4, 1], tf.uint8))
    ds = {'image': png, 'label_x_position': tf.constant(31, tf.int64), 'label_orientation': tf.constant(39, tf.int64)}
    assert label('dsprites_loc', ds) == 15 and label('dsprites_ori', ds) == 15
    assert int(tf.reduce_max(tasks.example_fn(tasks.TASKS_BY_NAME['dsprites_loc'])(ds)['image'])) == 255
    norb = {'image': img, 'label_azimuth': tf.constant(7, tf.int64), 'label_elevation': tf.constant(3, tf.int64)}
    assert label('smallnorb_azi', norb) == 7 and label('smallnorb_ele', norb) == 3


def test_vtab_sweep_selection_resume_and_tables(vtab, tmp_path):
    vtab_config, tasks, vtab_run = vtab
    calls = []
    val = {0.001: 0.5, 0.01: 0.8, 0.03: 0.8}

    def fake_train(config, workdir):
        calls.append((config.vtab.task, config.vtab.mode, config.lr.base, config.data.train_split))
        acc = val[config.lr.base] if config.vtab.mode == 'hp' else 0.6 + 0.1 * len(config.vtab.task) / 20
        return {'val/accuracy': acc, 'step': config.total_steps}

    chosen = [tasks.TASKS_BY_NAME[n] for n in ('dtd', 'eurosat', 'dmlab', 'clevr_count')]
    res = vtab_run.run_sweep(str(tmp_path), chosen, lrs=(0.001, 0.01, 0.03), steps=10, train_fn=fake_train)
    assert len(calls) == 4 * 4
    assert all(r['lr'] == 0.01 for r in res.values())  # Best val; the tie 0.01 / 0.03 goes to the smaller LR.
    assert ('dtd', 'final', 0.01, 'train[:800]+validation[0:200]') in calls
    assert ('dtd', 'hp', 0.03, 'train[:800]') in calls
    summary = json.load(open(tmp_path / 'results.json'))
    assert summary['num_tasks'] == 4
    assert summary['groups']['structured'] == pytest.approx((res['dmlab']['test'] + res['clevr_count']['test']) / 2)
    assert summary['mean'] == pytest.approx(np.mean([r['test'] for r in res.values()]))
    md = open(tmp_path / 'results.md').read()
    assert '| dtd | natural | 0.01 |' in md and '**structured** (2 tasks)' in md and '**mean** (4 tasks)' in md
    assert open(tmp_path / 'results.csv').read().count('\n') == 1 + 4 + 3 + 1
    # Running again repeats nothing (finished runs leave result.json) and keeps the table.
    calls.clear()
    vtab_run.run_sweep(str(tmp_path), chosen, lrs=(0.001, 0.01, 0.03), steps=10, train_fn=fake_train)
    assert calls == []
    # One learning rate: no selection runs.
    res1 = vtab_run.run_sweep(str(tmp_path / 'one'), chosen[:1], lrs=(0.01,), steps=10, train_fn=fake_train)
    assert calls == [('dtd', 'final', 0.01, 'train[:800]+validation[0:200]')] and res1['dtd']['val'] == {}
    assert vtab_run.main(['--workdir', str(tmp_path / 'x'), '--tasks', 'mnist']) == 2


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning from an earlier run: better accuracy in fewer steps than from scratch.
# ----------------------------------------------------------------------------------------------------------------
TINY = dict(patch_size=4, hidden_size=64, mlp_dim=128, num_heads=2, num_layers=2)
# The digits are 8x8 images stored 4x pixel-repeated; reducing them to 8x8 and resizing smoothly to the model size
# makes a change of resolution a change of scale, as for natural images (the blocky copies alias differently at
# each size, which a 2-layer model does not survive).
SMOOTH_PP = 'resize(8)|resize'
PRE_STEPS, FT_STEPS, SCRATCH_STEPS, FT_LR = 200, 40, 80, 0.05


def _run_config(base, image_size, steps, *, lr, optimizer, warmup, init_from=None, evals=None):
    c = base
    c.model = dict(c.model.to_dict(), name='ViT-testing', image_size=image_size, **TINY)
    c.data.train_pp = SMOOTH_PP
    c.data.eval_pp = SMOOTH_PP
    c.data.flip = False
    c.data.shuffle_buffer = 2000
    short_run(c, batch_size=64, steps=steps, log_every=10)
    if optimizer == 'adamw':
        c.optimizer = dict(c.optimizer.to_dict(), name='adamw', weight_decay=0.05, wd_mask='no_bias_norm',
                           accumulator_dtype=None)
        c.lr = dict(base=lr, warmup_steps=warmup, decay='cosine', end=1e-5)
    else:  # The fine-tuning configs' SGD recipe as configured (momentum 0.9, no weight decay, clip 1, cosine).
        assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.weight_decay) == ('sgd', 0.9, 0.0)
        c.lr = dict(c.lr.to_dict(), base=lr, warmup_steps=warmup)
    c.evals = dict(val=dict(type='classification', split='test', every=0), **(evals or {}))
    if init_from:
        c.init_from.path = init_from
    return c


@pytest.mark.slow
def test_finetune_from_an_earlier_run_beats_training_from_scratch(tmp_path, capsys):
    """The README's "fine-tune on your own images" path at a tiny scale, and the issue's "done when".

    An earlier run pretrains a tiny ViT on 1200 of the built-in digits at 16 px (4x4 tokens). Its workdir is the
    checkpoint of a fine-tuning run with configs/vit_b16.py:folder:... (the paper's SGD recipe, a new zero head) on
    an image folder of 100 other training digits (10 per class) at 24 px (6x6 tokens: the position embeddings are
    resampled). In half the steps it beats the same model trained from scratch on the same folder at 24 px.
    """
    base = _load('configs/quickstart.py')
    pre_cfg = _run_config(base, 16, PRE_STEPS, lr=3e-3, optimizer='adamw', warmup=20,
                          evals={'fewshot': dict(type='fewshot', shots=(1, 5, 25), seeds=2, every=0)})
    pre_cfg.data.train_split = 'train[:1200]'
    pre = train.train_and_evaluate(pre_cfg, str(tmp_path / 'pre'))

    folder = _digits_folder(tmp_path / 'my_images', per_class=10, start=1200)
    ft_cfg = _run_config(_load(f'configs/vit_b16.py:folder:{folder}'), 24, FT_STEPS, lr=FT_LR, optimizer='sgd',
                         warmup=5, init_from=str(tmp_path / 'pre'))
    assert tuple(ft_cfg.init_from.dont_load) == ('head/.*', 'pre_logits/.*')  # A new, zero-initialised head.
    ft = train.train_and_evaluate(ft_cfg, str(tmp_path / 'ft'))
    assert f'Initialised from {tmp_path / "pre"}' in capsys.readouterr().out

    scratch_cfg = _run_config(_load(f'configs/vit_b16.py:folder:{folder}'), 24, SCRATCH_STEPS, lr=3e-3,
                              optimizer='adamw', warmup=20)
    scratch = train.train_and_evaluate(scratch_cfg, str(tmp_path / 'scratch'))
    fewshot = {k: round(v, 4) for k, v in pre.items() if k.startswith('fewshot/') and 'shot' in k}
    with capsys.disabled():
        print(f"\npretrain 16px {PRE_STEPS} steps: {pre['val/accuracy']:.4f}, few-shot {fewshot}; fine-tune 24px "
              f"{FT_STEPS} steps: {ft['val/accuracy']:.4f}; scratch 24px {SCRATCH_STEPS} steps: "
              f"{scratch['val/accuracy']:.4f}")
    assert FT_STEPS < SCRATCH_STEPS
    assert ft['val/accuracy'] > scratch['val/accuracy'] + 0.03
    assert ft['val/accuracy'] > 0.7
    assert pre['fewshot/digits_25shot'] > pre['fewshot/digits_1shot']

    # The position embedding was resampled from the 4x4 grid to 6x6.
    assert checkpoint.load_params(str(tmp_path / 'pre'))['Transformer']['posembed_input']['pos_embedding'].shape == (
        1, 17, 64)
    assert checkpoint.load_params(str(tmp_path / 'ft'))['Transformer']['posembed_input']['pos_embedding'].shape == (
        1, 37, 64)

    # Predict with the fine-tuned run, as the README does.
    img = os.path.join(folder, 'test', '3', sorted(os.listdir(os.path.join(folder, 'test', '3')))[0])
    capsys.readouterr()
    assert predict.main(['--checkpoint', str(tmp_path / 'ft'), img]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f'{img}:' and len(lines) == 6


def test_finetune_at_a_non_square_resolution_through_the_trainer(tmp_path):
    """The trainer hands the model's grid to load_pretrained: 4x4 -> 6x4 tokens, exactly the release's resampling."""
    from vit_jax.models import layers

    pre_cfg = _run_config(_load('configs/quickstart.py'), 16, 2, lr=1e-3, optimizer='adamw', warmup=1)
    pre_cfg.model.num_layers = 1
    train.train_and_evaluate(pre_cfg, str(tmp_path / 'pre'))
    ft_cfg = _run_config(_load('configs/vit_b16.py:cifar10'), (24, 16), 1, lr=0.0, optimizer='sgd', warmup=0,
                         init_from=str(tmp_path / 'pre'))
    ft_cfg.model.num_layers = 1
    ft_cfg.dataset = 'digits'
    ft_cfg.data.train_split = 'train'
    ft_cfg.evals = {}
    train.train_and_evaluate(ft_cfg, str(tmp_path / 'ft'))
    old = checkpoint.load_params(str(tmp_path / 'pre'))
    new = checkpoint.load_params(str(tmp_path / 'ft'))  # lr 0: still exactly the loaded weights.
    pe = old['Transformer']['posembed_input']['pos_embedding']
    np.testing.assert_array_equal(new['Transformer']['posembed_input']['pos_embedding'],
                                  layers.resample_posemb(pe, 25, num_prefix_tokens=1, old_hw=(4, 4), new_hw=(6, 4)))
    np.testing.assert_array_equal(new['embedding']['kernel'], old['embedding']['kernel'])
    assert not np.any(new['head']['kernel'])  # The new head: zeros.


@pytest.mark.slow
def test_vtab_sweep_end_to_end_on_digits(vtab, tmp_path):
    """run_sweep through vit_jax.train with a stand-in task on the built-in digits (no TFDS data here)."""
    _, tasks, vtab_run = vtab
    task = tasks.Task('digits', tasks.NATURAL, None, 10, 'train', 'train[1000:]', 'test', dataset='digits')
    overrides = [('model.name', 'ViT-testing'), ('model.image_size', '16'), ('model.num_layers', '1'),
                 ('batch_size', '32'), ('data.train_pp', SMOOTH_PP), ('data.eval_pp', SMOOTH_PP),
                 ('tensorboard', 'False')]
    res = vtab_run.run_sweep(str(tmp_path), [task], lrs=(0.01, 0.1), steps=5, overrides=overrides)
    assert set(res['digits']['val']) == {'0.01', '0.1'} and 0.0 <= res['digits']['test'] <= 1.0
    assert os.path.isfile(tmp_path / 'digits' / 'final' / 'result.json')
    assert '| digits | natural |' in open(tmp_path / 'results.md').read()


def _mock_tfds(name, data_dir, splits=('train', 'validation'), n=24):
    """TFDS metadata for `name` with `n`-example splits; tfds.testing.mock_data then serves random records."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=builder.name, split='train',
                                             filetype_suffix='tfrecord')
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=template.replace(split=s))
        for s in splits]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


@pytest.mark.parametrize('task_name', ['dsprites_ori', 'smallnorb_ele', 'dtd'])
def test_vtab_dataset_reads_tfds_records(vtab, tmp_path, task_name):
    """The `vtab1k:<task>` dataset on mock TFDS records: derived labels in range, RGB images, split slices."""
    import tensorflow_datasets as tfds

    from vit_jax import data

    _, tasks, _ = vtab
    task = tasks.TASKS_BY_NAME[task_name]
    _mock_tfds(task.tfds_name, str(tmp_path), splits=('train', 'validation', 'test'))
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        cfg = {'data_dir': str(tmp_path), 'eval_pp': 'resize'}
        ds = data.get_dataset(f'vtab1k:{task_name}', 'train[:8]+validation[4:12]', data_config=cfg, batch_size=4,
                              image_size=16, train=False)
        assert ds.num_classes == task.num_classes and ds.num_examples == 16
        batches = list(ds)
        labels = np.concatenate([b['label'][b['mask']] for b in batches])
        assert len(labels) == 16 and labels.min() >= 0 and labels.max() < task.num_classes
        assert batches[0]['image'].shape == (4, 16, 16, 3)
        tr = data.get_dataset(f'vtab1k:{task_name}', 'train[:8]', data_config=cfg, batch_size=4, image_size=16,
                              train=True)
        assert next(iter(tr))['image'].shape == (4, 16, 16, 3)


def test_vtab_error_paths(vtab, tmp_path):
    import tensorflow_datasets as tfds

    from vit_jax import data

    _, tasks, vtab_run = vtab
    task = tasks.TASKS_BY_NAME['dtd']
    with pytest.raises(ValueError, match='At least one learning rate'):
        vtab_run.run_sweep(str(tmp_path), [task], lrs=())
    with pytest.raises(RuntimeError, match='preempted'):
        vtab_run.run_sweep(str(tmp_path), [task], lrs=(0.01,),
                           train_fn=lambda c, w: {'preempted': True, 'val/accuracy': 0.0, 'step': 1})
    _mock_tfds('dtd', str(tmp_path), splits=('train',))
    with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
        with pytest.raises(ValueError, match="no split 'validation'"):
            data.get_dataset('vtab1k:dtd', 'validation[:4]', data_config={'data_dir': str(tmp_path)},
                             batch_size=4, image_size=16, train=False)
