"""vit_jax.registry.Registry: one class behind every name table, the same messages, lazy imports; and the
evaluators' one data helper (`Evaluator.data`)."""

import sys
import types

import ml_collections
import pytest

from vit_jax import evaluators, models, registry
from vit_jax.data import datasets, preprocess
from vit_jax.evaluators import base
from vit_jax.porting import registry as porting_registry


def test_add_get_aliases_and_order():
    reg = registry.Registry('widget')
    reg.add('b', 2)
    assert reg.register('a', aliases=('A', 'alpha'))(1) == 1  # The decorator returns the object itself.
    assert reg.get('a') == reg.get('A') == reg.get('alpha') == 1
    assert reg.names() == ['b', 'a'] and list(reg) == ['b', 'a'] and len(reg) == 2
    assert reg.items() == [('b', 2), ('a', 1)]
    assert reg.aliases() == {'A': 'a', 'alpha': 'a'} and reg.resolve('alpha') == 'a'
    assert 'A' in reg and 'c' not in reg
    for name in ('a', 'alpha'):  # A name or alias is registered once.
        with pytest.raises(ValueError, match=f"Widget '{name}' is registered twice"):
            reg.add(name, 3)
    with pytest.raises(ValueError, match=r"Unknown widget 'alpah'\. Did you mean: alpha\? Registered widgets: a, b\."):
        reg.get('alpah')
    with pytest.raises(ValueError, match=r"^Unknown widget 'zzz'\. Registered widgets: a, b\.$"):
        reg.get('zzz')

    @reg.register('c', entry=lambda fn: ('record', fn))  # A record of the function is stored; it stays itself.
    def c():
        return 3

    assert c() == 3 and reg.get('c') == ('record', c)


def test_modules_are_imported_once_on_a_missing_name(tmp_path, monkeypatch):
    reg = registry.Registry('gadget', plural='gadgetry', modules=('_vj_test_gadgets', '_vj_no_such_module'))
    monkeypatch.setitem(sys.modules, '_vj_holder', types.SimpleNamespace(reg=reg))
    (tmp_path / '_vj_test_gadgets.py').write_text("import sys\nsys.modules['_vj_holder'].reg.add('late', 7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, '_vj_test_gadgets', raising=False)
    reg.add('early', 1)
    assert reg.get('early') == 1 and '_vj_test_gadgets' not in sys.modules  # Present: nothing imported.
    assert reg.get('late') == 7  # Missing: the modules are imported (a missing module is skipped).
    with pytest.raises(ValueError, match='Registered gadgetry: early, late'):
        reg.get('other')


def test_a_broken_registering_module_is_not_hidden(tmp_path, monkeypatch):
    (tmp_path / '_vj_broken_mod.py').write_text('import _vj_dependency_that_is_missing\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry.Registry('thing', modules=('_vj_broken_mod',))
    with pytest.raises(ModuleNotFoundError, match='_vj_dependency_that_is_missing'):
        reg.names()


def test_the_project_registries_are_one_class_with_one_message():
    tables = [(models.MODELS, 'model', 'ViT-B/17', 'ViT-B/16', 'Registered models'),
              (evaluators.EVALUATORS, 'evaluator type', 'clasification', 'classification',
               'Registered evaluator types'),
              (preprocess._OPS, 'preprocessing op', 'inception_crops', 'inception_crop', 'Registered ops'),
              (datasets._DATASETS, 'dataset', 'digit', 'digits', 'Registered datasets'),
              (porting_registry.OFFICIAL, 'official family', 'timesformr', 'timesformer',
               'Registered official families')]
    for reg, kind, typo, right, listed in tables:
        assert isinstance(reg, registry.Registry)
        with pytest.raises(ValueError, match=rf"Unknown {kind} '{typo}'\. Did you mean: [^?]*{right}.*{listed}: "):
            reg.get(typo)
    assert models.get_entry('ViT-B_16').name == 'ViT-B/16'  # Aliases.
    assert models.list_models() == models.MODELS.names()
    assert models.list_models('test') and all(models.get_entry(n).paper == 'test' for n in models.list_models('test'))
    assert evaluators.get('classification').__name__ == 'Classification'
    assert preprocess.get_op('flip').name == 'flip' and 'flip' in preprocess.list_ops()
    assert 'folder:' in datasets.list_datasets() and datasets.find_builtin('folder:/x')[1] == '/x'
    assert datasets.find_builtin('no_such_tfds_name') is None
    assert porting_registry.official_families() == sorted(porting_registry.OFFICIAL.names())


def _ctx(**config):
    c = ml_collections.ConfigDict({**dict(dataset='digits', batch_size=64, seed=3, data=dict(value_range=(-1.0, 1.0))),
                                   **config})
    return base.Context(config=c, model=None, objective=None, mesh=None, image_size=(16, 16), make_dataset=None)


def test_eval_data_batch_size_dataset_and_value_range():
    ev = base.Evaluator('val', ml_collections.ConfigDict(dict(type='x')), _ctx())
    d = ev.data
    assert (d.dataset, d.split, d.batch_size, d.seed, d.data_config) == ('digits', 'test', 64, 3, None)
    assert d.run_data == {'value_range': (-1.0, 1.0)}
    assert ev.batch_size() == 64 and d.value_range == (-1.0, 1.0)
    assert d.config['eval_pp'] == 'resize' and d.config['flip'] is False  # Pipeline and 'digits' defaults.
    ev = base.Evaluator('val', dict(type='x', batch_size=None, split=None), _ctx(eval_batch_size=32))
    assert (ev.data.batch_size, ev.data.split) == (32, 'test')  # None falls through as a missing key.
    ev = base.Evaluator('val', dict(type='x', batch_size=8, split='train', dataset='outpaint_samples',
                                    data=dict(eval_pp='resize')), _ctx(eval_batch_size=32))
    assert (ev.data.batch_size, ev.data.split, ev.data.dataset) == (8, 'train', 'outpaint_samples')
    # The run's data config wins over the dataset's defaults, the entry's over the run's.
    assert ev.data.value_range == (-1.0, 1.0) and ev.data.data_config == {'eval_pp': 'resize'}
    ev = base.Evaluator('val', dict(type='x', dataset='outpaint_samples'), _ctx(data=dict()))
    assert ev.data.value_range == (0.0, 1.0)  # outpaint_samples' own default, as its pipeline applies.
    ev = base.Evaluator('val', dict(type='x', data=dict(value_range=(0, 255))), _ctx())
    assert ev.data.value_range == (0.0, 255.0)
