"""The configs: every file loads with each of its documented arguments and passes validation; the shared `:arg`
parser (configs/common.py); configs import each other as a package, from any working directory."""

import ast
import json
import os
import re
import subprocess
import sys

import pytest

from configs import common
from vit_jax import config_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEIT_FAMILY = [None, 'imagenet', 'imagenet384', 'cifar10', 'cifar100', 'pets', 'flowers', 'digits', 'digits,tiny']
T2T = [None, 'imagenet', 'imagenet384', 'cifar10', 'cifar100', 'digits', 'digits,tiny']
TRANSFER = [None, 'cifar10', 'cifar100', 'oxford_iiit_pet', 'oxford_flowers102', 'imagenet2012', 'imagenet', 'pets',
            'flowers', 'cifar10,hp', 'imagenet,hp', 'flowers,hp', 'folder:{folder}', 'folder:{folder},hp']
ATTENTION = ('divided_space_time', 'space_only', 'joint_space_time', 'sparse_local_global', 'axial')
TIMESFORMER = [None, 'base', 'hr', 'l', 'hr,joint_space_time', 'space_only'] + [f'base,{a}' for a in ATTENTION]
VTAB = [None, 'caltech101,hp', 'dtd', 'clevr_count', 'smallnorb_ele,hp', 'caltech101,hp,lr=0.003,steps=100']

# Each config file and the arguments its docstring documents (None: no argument).
ARGS = {
    'cct_14_7x2': [None, 'imagenet', 'imagenet384', 'flowers384'],
    'cct_7_3x1': [None, 'cifar10', 'cifar100,5000', 'cifar10,1500', 'cifar100,300,CVT-7/4', 'cifar10,300,CCT-6/3x2'],
    'cct_7_7x2': [None],
    'crossvit_15': DEIT_FAMILY, 'crossvit_15_dagger': DEIT_FAMILY, 'crossvit_18': DEIT_FAMILY,
    'crossvit_18_dagger': DEIT_FAMILY, 'crossvit_9': DEIT_FAMILY, 'crossvit_9_dagger': DEIT_FAMILY,
    'crossvit_b': DEIT_FAMILY, 'crossvit_s': DEIT_FAMILY, 'crossvit_ti': DEIT_FAMILY,
    'cvt_13': DEIT_FAMILY, 'cvt_21': DEIT_FAMILY,
    'deit_recipe': [None, 'ViT-S/16', 'CvT-13'],
    'dhvt': [None, 'T,imagenet', 'S,imagenet', 'T-CIFAR/4,cifar10', 'S-CIFAR/4,cifar100', 'T-CIFAR/2,cifar100'],
    'dpt_ade20k': [None, 'Large', 'Hybrid,init=/path/R50+ViT-B_16.npz'],
    'dpt_digits': [None, 'seg', 'tiny', 'seg,tiny'],
    'dpt_kitti': [None, '/data/kitti_eigen,Hybrid', '/data/kitti_eigen,Large,init=/p/ViT-L_16.npz'],
    'dpt_nyu': [None, 'Large', 'Hybrid,init=/path/R50+ViT-B_16.npz'],
    'dtn_vit': [None, 'T*', 'S', 'B*', 'S*,layernorm', 'B,dtn_var'],
    'milan_b16': [None, 'pretrain', 'finetune', 'linprobe', 'digits', 'digits_tiny', 'digits_vit_teacher',
                  'digits_finetune', 'digits_scratch', 'digits_linprobe'],
    'peco_beit_b16': [None, 'pretrain', 'finetune', 'digits', 'digits_finetune', 'digits_scratch'],
    'peco_tokenizer': [None, 'digits', 'digits_tiny'],
    'pyramid_at_b16': [None, 'pyramid', 'pixel', 'baseline'],
    'pyramid_at_digits': [None, 'pyramid', 'pixel', 'baseline'],
    'queryotr': [None, 'scenery', 'building', 'wikiart'],
    'queryotr_tiny': [None, 'tiny'],
    'quickstart': [None, 'tiny'],
    'quickstart_cct': [None, 'CVT', 'ViT-Lite', 'tiny', 'CCT,tiny', 'ViT-Lite,tiny'],
    'quickstart_dhvt': [None, 'tiny'],
    'quickstart_dtn': [None, 'layernorm', 'tiny', 'layernorm,tiny'],
    'r50_vit_b16': TRANSFER, 'vit_b16': TRANSFER, 'vit_b32': TRANSFER, 'vit_l16': TRANSFER, 'vit_s16': TRANSFER,
    'vit_ti16': TRANSFER,
    'robust_vit_digits': [None, 'adversarial', 'clean'],
    'robust_vit_s16': [None, 'b16', 'b16,eps8', 's16,eps8,gpu_mode'],
    'segmenter_ade20k': [None, 'T-Mask/16', 'B/8', 'L-Mask/16', 'Seg-B/16', 'B-Mask/16,init=/path/ViT-B_16-384.npz'],
    'segmenter_cityscapes': [None, 'L-Mask/16,init=/path/ViT-L_16-384.npz'],
    'segmenter_digits': [None, 'linear', 'mask,scratch', 'linear,tiny', 'mask,tiny'],
    'segmenter_pascal_context': [None, '/data/pcontext,L-Mask/16', '/data/pcontext,B/16,init=/p/ViT-B_16.npz'],
    'shape_token_deit_s16': [None, 'ViT-B/16'],
    't2t_vit_14': T2T, 't2t_vit_19': T2T, 't2t_vit_24': T2T, 't2t_vit_7': T2T, 't2t_vit_t_14': T2T,
    't2t_vit_t_24': T2T,
    'timesformer_k400': TIMESFORMER, 'timesformer_k600': TIMESFORMER, 'timesformer_ssv2': TIMESFORMER,
    'timesformer_moving_digits': [None, 'tiny', *ATTENTION],
}


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """root/{train,test}/<class>/*.png for the `folder:` argument of the transfer configs."""
    from PIL import Image

    root = tmp_path_factory.mktemp('images')
    for split in ('train', 'test'):
        for cls in ('cat', 'dog', 'eel'):
            os.makedirs(root / split / cls)
            Image.new('RGB', (4, 4), (100, 20, 3)).save(root / split / cls / '0.png')
    return str(root)


def _load(path, arg):
    return config_utils.load(os.path.join(ROOT, path) + ('' if arg is None else f':{arg}'))


def test_every_config_file_is_listed():
    files = {f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs')) if f.endswith('.py')}
    assert files - {'__init__', 'common'} == set(ARGS)


@pytest.mark.parametrize('name', sorted(ARGS))
def test_config_loads_and_validates(name, image_folder):
    for arg in ARGS[name]:
        arg = None if arg is None else arg.format(folder=image_folder)
        c = _load(f'configs/{name}.py', arg)
        try:
            config_utils.validate(c)
        except ValueError as e:
            raise AssertionError(f'configs/{name}.py:{arg}: {e}') from None


def test_vtab_config_loads_and_validates():
    for arg in VTAB:
        config_utils.validate(_load('experiments/vtab1k/config.py', arg))


def test_arguments_select_what_the_docstrings_say(image_folder):
    assert _load('configs/vit_b16.py', None).dataset == 'cifar10'
    hp = _load('configs/vit_b16.py', 'pets,hp')
    assert (hp.dataset, hp.data.train_split, hp.evals.val.split) == ('oxford_iiit_pet', 'train[:90%]', 'train[90%:]')
    assert _load('configs/vit_b16.py', 'hp,pets').to_dict() == hp.to_dict()  # Order-free: `hp` is a flag.
    assert _load('configs/vit_b16.py', f'folder:{image_folder},hp').data.train_split == 'train[:90%]'
    c = _load('configs/cct_7_3x1.py', 'cifar100,5000,CVT-7/4')
    assert (c.dataset, c.model.name, c.model.posemb, c.lr.base) == ('cifar100', 'CVT-7/4', 'sine', 5e-4)
    assert _load('configs/cct_7_3x1.py', 'epochs=5000,dataset=cifar100,model=CVT-7/4').to_dict() == c.to_dict()
    c = _load('configs/dtn_vit.py', 'layernorm,S*')  # OneOf options: any order.
    assert (c.model.name, c.model.norm) == ('DTN-ViT-S*', 'layernorm')
    c = _load('configs/dpt_kitti.py', 'Large,/data/k,init=/w/x.npz')
    assert (c.model.name, c.dataset, c.init_from.path) == ('DPT-Large', 'dense_folder:/data/k', '/w/x.npz')
    c = _load('configs/segmenter_pascal_context.py', 'B/16,/data/pc')
    assert (c.model.name, c.dataset) == ('Seg-B/16', 'dense_folder:/data/pc')
    c = _load('configs/timesformer_k400.py', 'axial,hr')
    assert (c.model.name, c.model.attention_type) == ('TimeSformer-HR', 'axial')
    c = _load('configs/robust_vit_s16.py', 'eps8,b16,gpu_mode')
    assert (c.model.name, c.objective.attack_steps, c.objective.attack_train_mode) == ('ViT-B/16', 2, False)
    c = _load('experiments/vtab1k/config.py', 'dtd,hp,lr=0.003,steps=100')
    assert (c.lr.base, c.total_steps, c.vtab.mode) == (0.003, 100, 'hp')
    assert _load('configs/quickstart_cct.py', 'tiny').model.name == 'CCT-7/3x1'


@pytest.mark.parametrize('spec,match', [
    ('configs/cct_7_7x2.py:imagenet', "Unknown option 'imagenet'.*takes no argument"),
    ('configs/dtn_vit.py:T*,groupnorm', "Unknown option 'groupnorm'.*norm \\(one of dtn, dtn_var, layernorm"),
    ('configs/vit_b16.py:cifar10,fast', "Unknown option 'fast'"),
    ('configs/vit_b16.py:cifar10,lr=0.1', "Unknown option 'lr'.*options: dataset"),
    ('configs/quickstart.py:tiny=maybe', 'tiny is True or False'),
    ('configs/cct_7_3x1.py:cifar10,many', 'epochs expects int'),
    ('configs/timesformer_k400.py:base,hr', "Option 'variant' is given twice"),
    ('configs/milan_b16.py:digits_ft', 'one of pretrain, finetune, linprobe, digits'),
])
def test_bad_arguments_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        config_utils.load(os.path.join(ROOT, spec))


def test_parse_arg():
    spec = dict(dataset='cifar10', epochs=300, lr=0.1, tiny=False, norm=common.OneOf('dtn', ('dtn', 'layernorm')),
                init=None)
    a = common.parse_arg(None, **spec)
    assert a.to_dict() == dict(dataset='cifar10', epochs=300, lr=0.1, tiny=False, norm='dtn', init=None)
    a = common.parse_arg(' layernorm, cifar100 ,tiny,,5000,init=/a/b=c.npz ', **spec)
    assert a.to_dict() == dict(dataset='cifar100', epochs=5000, lr=0.1, tiny=True, norm='layernorm',
                               init='/a/b=c.npz')
    assert type(a.epochs) is int and type(a.lr) is float
    a = common.parse_arg('lr=1,tiny=False,norm=dtn', **spec)
    assert (a.lr, type(a.lr), a.tiny, a.dataset) == (1.0, float, False, 'cifar10')
    assert common.parse_arg('tiny=1', **spec).tiny is True
    with pytest.raises(ValueError, match="Unknown option '/x'"):  # None-default options are keyword-only.
        common.parse_arg('c10,300,0.1,/x', **spec)
    with pytest.raises(ValueError, match='norm is one of dtn, layernorm'):
        common.parse_arg('norm=bn', **spec)
    root = common.OneOf('/data', lambda w: '/' in w, what='a path')
    assert common.parse_arg('B/16', root=root, variant='L').to_dict() == dict(root='B/16', variant='L')
    assert common.parse_arg('B,/d', root=root, variant='L').to_dict() == dict(root='/d', variant='B')


def test_configs_import_each_other_as_a_package():
    _load('configs/vit_s16.py', 'cifar10')
    _load('configs/vit_b16.py', 'cifar10')
    assert sys.modules['configs.vit_s16'].vit_b16 is sys.modules['configs.vit_b16']
    assert sys.modules['configs.vit_b16'].common is common
    for folder in ('configs', 'experiments'):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith('.py'):
                    tree = ast.parse(open(os.path.join(dirpath, f)).read())
                    names = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(tree)
                             if isinstance(n, (ast.Name, ast.Attribute))}
                    assert not names & {'spec_from_file_location', 'exec_module'}, f'{folder}/{f} loads by path'


SCRIPT = r'''
import json, os, sys
from vit_jax import config_utils
out = {}
out["s16"] = config_utils.load("configs/vit_s16.py:pets,hp").to_dict()["data"]["train_split"]
out["vtab"] = config_utils.load(sys.argv[1] + "/experiments/vtab1k/config.py:dtd").dataset
out["copy"] = config_utils.load("my_config.py:tiny").to_dict()["model"]["name"]
out["configs"] = os.path.dirname(sys.modules["configs"].__file__)
if len(sys.argv) > 2:  # An installed vit_jax without the repository's configs/ folder.
    config_utils.REPO_ROOT = "/nonexistent"
    del sys.modules["configs"]
    try:
        config_utils.load("my_config.py")
    except config_utils.ConfigError as e:
        out["error"] = str(e)
print(json.dumps(out))
'''

COPIED_CONFIG = '''
from configs import common, vit_b16


def get_config(arg=None):
    arg = common.parse_arg(arg, tiny=False)
    return vit_b16.get_transfer_config('ViT-Ti/16' if arg.tiny else 'ViT-B/16', 'cifar10')
'''


@pytest.mark.parametrize('installed', [False, True])
def test_load_from_another_working_directory(tmp_path, installed):
    """Configs in the checkout (relative paths resolve there) and a copy elsewhere that imports the package."""
    (tmp_path / 'my_config.py').write_text(COPIED_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-c', SCRIPT, ROOT] + (['installed'] if installed else []), cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['s16'] == 'train[:90%]' and out['vtab'] == 'vtab1k:dtd' and out['copy'] == 'ViT-Ti/16'
    assert os.path.realpath(out['configs']) == os.path.realpath(os.path.join(ROOT, 'configs'))
    if installed:
        assert 'my_config.py' in out['error'] and "'configs'" in out['error'] and 'PYTHONPATH' in out['error']


def test_cli_finds_configs_from_another_working_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-m', 'vit_jax.main', '--config=configs/vit_s16.py:cifar10',
                        '--config.total_steps=0'], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert 'Config error: config.total_steps must be a positive integer' in r.stderr, r.stderr[-3000:]


def _documented_runs():
    """Each `python -m vit_jax.main` command of README.md and the configs' docstrings: (config spec, workdir,
    {override: value})."""
    texts = [open(os.path.join(ROOT, 'README.md')).read()]
    for f in sorted(os.listdir(os.path.join(ROOT, 'configs'))):
        if f.endswith('.py'):
            with open(os.path.join(ROOT, 'configs', f)) as fh:
                texts.append(ast.get_docstring(ast.parse(fh.read())) or '')
    runs = []
    for text in texts:
        for line in text.replace('\\\n', ' ').splitlines():
            if 'python -m vit_jax.main' not in line or '--config=' not in line:
                continue
            args = [a.strip('"\'`') for a in line.split('#')[0].split()]
            opts = dict(a[2:].split('=', 1) for a in args if a.startswith('--') and '=' in a)
            spec = opts.pop('config').split('[')[0]  # configs/timesformer_k600.py[:hr|:l]: the base run.
            runs.append((spec, opts.pop('workdir', None), opts))
    return runs


# The released checkpoints the docs start from: the model (name, options) each file holds.
RELEASES = {
    'ViT-B_16.npz': ('ViT-B/16', dict(num_classes=21843, representation_size=768)),  # ImageNet-21k, pre-logits.
    'ViT-B_32.npz': ('ViT-B/32', dict(num_classes=21843, representation_size=768)),
    'ViT-L_16.npz': ('ViT-L/16', dict(num_classes=21843, representation_size=1024)),
    'ViT-S_16.npz': ('ViT-S/16', dict(num_classes=21843)),  # AugReg: no pre-logits.
    'ViT-Ti_16.npz': ('ViT-Ti/16', dict(num_classes=21843)),
    'R50+ViT-B_16.npz': ('R50+ViT-B/16', dict(num_classes=21843, representation_size=768)),
    'imagenet21k+imagenet2012_ViT-B_16-224.npz': ('ViT-B/16', dict(num_classes=1000)),
}


def _fine_tune_pairs():
    """(source, fine-tuning run) pairs: a documented run that starts (a `--config.init_from.path=` override or its
    config's own `init_from.path`) from another documented run's workdir, or from a released file of RELEASES
    (source ('release', file, {}))."""
    runs = _documented_runs()
    by_workdir = {r[1]: r for r in runs if r[1] and '$' not in r[1] and '...' not in r[1]}
    pairs = []
    for r in runs:
        if re.search(r'[{$]|NAME', r[0]):  # Placeholders (configs/NAME.py, folder:$PWD/...).
            continue
        path = r[2].get('config.init_from.path') or (config_utils.load(r[0]).get('init_from') or {}).get('path')
        source = by_workdir.get(path) or (('release', os.path.basename(path), {})
                                          if path and os.path.basename(path) in RELEASES else None)
        if source and (source[:2], r[0]) not in {(a[:2], b[0]) for a, b in pairs}:
            pairs.append((source, r))
    return pairs


def test_documented_fine_tune_pairs_are_found():
    pairs = {(a[0], b[0]) for a, b in _fine_tune_pairs()}
    for pair in [('configs/milan_b16.py', 'configs/milan_b16.py:finetune'),
                 ('configs/peco_beit_b16.py', 'configs/peco_beit_b16.py:finetune'),
                 ('configs/peco_beit_b16.py:digits', 'configs/peco_beit_b16.py:digits_finetune'),
                 ('configs/segmenter_digits.py:linear', 'configs/segmenter_digits.py'),
                 ('configs/cct_14_7x2.py:imagenet', 'configs/cct_14_7x2.py:imagenet384'),
                 ('configs/crossvit_s.py', 'configs/crossvit_s.py:imagenet384'),
                 ('release', 'configs/timesformer_k400.py'), ('release', 'configs/vit_b16.py:cifar10')]:
        assert pair in pairs, sorted(pairs)


@pytest.mark.parametrize('pre,fine', _fine_tune_pairs(),
                         ids=lambda r: (r[1] if r[0] == 'release' else r[0]).removeprefix('configs/'))
def test_documented_fine_tunes_load_their_pretraining(pre, fine):
    """Every fine-tune the docs show (README.md, config docstrings) accepts the parameters of the run or released
    file it starts from under its own `init_from` settings, as `train.py` loads them (shapes only)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vit_jax import checkpoint, models, train

    def params_of(run):
        if run[0] == 'release':
            name, kw = RELEASES[run[1]]
            model = models.get_model(name, **kw)
            zeros = jax.tree_util.tree_map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape),
                                           models.init_shapes(model)['params'])
            return None, model, zeros
        config = config_utils.load(run[0])
        for k, v in run[2].items():
            if k.startswith('config.') and k != 'config.init_from.path':
                config_utils.override(config, k[len('config.'):], v)
        model = train.build_model(config)
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(models.input_shape(model, 1))))
        zeros = jax.tree_util.tree_map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes['params'])
        return config, model, zeros

    _, pre_model, pre_params = params_of(pre)
    config, model, init = params_of(fine)
    models.load_pretrained(model, init, pre_params, dont_load=tuple(config.init_from.get('dont_load', ()) or ()),
                           old_grid=checkpoint.model_grid(pre_model), new_grid=checkpoint.model_grid(model))


def test_documented_commands_load_and_validate():
    """Every `python -m vit_jax.main` command of README.md and the configs' docstrings: its config loads, its
    `--config.*` overrides name real fields and parse, and the result validates."""
    checked = 0
    for spec, _, opts in _documented_runs():
        if re.search(r'[{$]|NAME', spec):  # Placeholders (configs/NAME.py, folder:$PWD/...).
            continue
        config = config_utils.load(spec)
        for k, v in opts.items():
            if k.startswith('config.'):
                config_utils.override(config, k[len('config.'):], v)
        try:
            config_utils.validate(config)
        except config_utils.ConfigError as e:  # Multi-device meshes (README's FSDP lines) need their devices.
            if not re.search(r'needs \d+ devices but 1 are available', str(e)):
                raise
        checked += 1
    assert checked >= 100, checked
