"""The VTAB-1k sweep: learning-rate selection on train800/val200, final runs on train800val200, the results table.

    python -m experiments.vtab1k.run --workdir=workdirs/vtab_b16 --config.init_from.path=ViT-B_16.npz
    python -m experiments.vtab1k.run --workdir=workdirs/vtab_b16 --tasks=caltech101,dtd --lrs=0.01 \\
        --config.init_from.path=ViT-B_16.npz --config.model.name=ViT-B/16 --config.optimizer.accum_steps=8

For each task: one run per learning rate of `--lrs` trained on train800 and evaluated on val200 (skipped when a
single LR is given: the ViT paper's setting is lr 0.01 for every task), then the final run with the best LR trained
on train800val200 and evaluated on the task's test split. Every run is `vit_jax.train.train_and_evaluate` in
`WORKDIR/<task>/{hp_lr<LR>,final}`; a finished run leaves `result.json` there and is not repeated, so the same
command continues an interrupted sweep. `--config.X=Y` overrides apply to every run (model, batch size, init_from
...).

Writes `WORKDIR/results.json`, `WORKDIR/results.csv` and `WORKDIR/results.md`: the test accuracy per task, the mean
per group (natural 7 tasks, specialized 4, structured 8) and the mean over all tasks (VTAB's score), with the
selected LR and the validation accuracies.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

if __package__ in (None, ''):  # Run as a script: make the repository root importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.vtab1k import config as vtab_config  # noqa: E402
from experiments.vtab1k import tasks as tasks_lib  # noqa: E402


def _lr_tag(lr: float) -> str:
    return f'{lr:g}'


def _run(config: Any, workdir: str, train_fn: Callable[[Any, str], dict]) -> dict:
    """Runs one config in `workdir` unless it already finished there; returns {'accuracy': ..., 'steps': ...}."""
    done = os.path.join(workdir, 'result.json')
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    result = train_fn(config, workdir)
    if result.get('preempted'):
        raise RuntimeError(f'The run in {workdir} was preempted; run the same command again to continue.')
    out = {'accuracy': float(result['val/accuracy']), 'steps': int(result['step'])}
    os.makedirs(workdir, exist_ok=True)
    with open(done, 'w') as f:
        json.dump(out, f)
    return out


def _default_train(config: Any, workdir: str) -> dict:
    from vit_jax import config_utils, train

    config_utils.validate(config)
    return train.train_and_evaluate(config, workdir)


def run_sweep(workdir: str, tasks: Sequence[Any], lrs: Sequence[float] = vtab_config.LR_GRID, *,
              steps: int = vtab_config.STEPS, overrides: Sequence[tuple[str, str]] = (),
              train_fn: Optional[Callable[[Any, str], dict]] = None) -> dict:
    """Runs the sweep over `tasks` (tasks.Task objects) and writes the tables; returns the results dict."""
    from vit_jax import config_utils

    train_fn = train_fn or _default_train
    lrs = [float(x) for x in lrs]
    if not lrs:
        raise ValueError('At least one learning rate is needed.')
    os.makedirs(workdir, exist_ok=True)
    results = load_results(workdir)

    def make(task, hp, lr):
        c = vtab_config.task_config(task, hp=hp, lr=lr, steps=steps)
        for k, v in overrides:
            config_utils.override(c, k, v)
        return c

    for task in tasks:
        entry = {'group': task.group, 'val': {}}
        if len(lrs) > 1:
            for lr in lrs:
                r = _run(make(task, True, lr), os.path.join(workdir, task.name, f'hp_lr{_lr_tag(lr)}'), train_fn)
                entry['val'][_lr_tag(lr)] = r['accuracy']
            best = max(lrs, key=lambda lr: (entry['val'][_lr_tag(lr)], -lr))  # Ties: the smaller LR.
        else:
            best = lrs[0]
        entry['lr'] = best
        entry['test'] = _run(make(task, False, best), os.path.join(workdir, task.name, 'final'), train_fn)['accuracy']
        results[task.name] = entry
        write_tables(workdir, results)
        print(f'[vtab] {task.name}: lr {best:g}, test accuracy {entry["test"]:.4f}', flush=True)
    return results


def load_results(workdir: str) -> dict:
    path = os.path.join(workdir, 'results.json')
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f).get('tasks', {})
    return {}


def summarize(results: dict) -> dict:
    """Per-group means and the mean over all tasks of the test accuracies (only over tasks that have one)."""
    groups = {}
    for g in tasks_lib.GROUPS:
        accs = [r['test'] for r in results.values() if r.get('group') == g and 'test' in r]
        if accs:
            groups[g] = sum(accs) / len(accs)
    accs = [r['test'] for r in results.values() if 'test' in r]
    return {'groups': groups, 'mean': sum(accs) / len(accs) if accs else None, 'num_tasks': len(accs)}


def write_tables(workdir: str, results: dict) -> str:
    """Writes results.json / .csv / .md and returns the markdown table."""
    summary = summarize(results)
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump({'tasks': results, **summary}, f, indent=2)
    order = [t.name for t in tasks_lib.TASKS] + sorted(set(results) - set(tasks_lib.TASKS_BY_NAME))
    rows = [(name, results[name]) for name in order if name in results]
    with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['task', 'group', 'lr', 'test_accuracy', 'val_accuracy_by_lr'])
        for name, r in rows:
            w.writerow([name, r['group'], r['lr'], f'{r["test"]:.4f}',
                        ';'.join(f'{k}:{v:.4f}' for k, v in r.get('val', {}).items())])
        for g, v in summary['groups'].items():
            w.writerow([f'mean_{g}', g, '', f'{v:.4f}', ''])
        if summary['mean'] is not None:
            w.writerow(['mean', 'all', '', f'{summary["mean"]:.4f}', ''])
    lines = ['| task | group | LR | test accuracy (%) | val200 accuracy by LR (%) |', '|---|---|---|---|---|']
    for name, r in rows:
        val = ', '.join(f'{k}: {100 * v:.1f}' for k, v in r.get('val', {}).items()) or '-'
        lines.append(f'| {name} | {r["group"]} | {r["lr"]:g} | {100 * r["test"]:.1f} | {val} |')
    for g, v in summary['groups'].items():
        n = sum(1 for r in results.values() if r.get('group') == g and 'test' in r)
        lines.append(f'| **{g}** ({n} tasks) | | | **{100 * v:.1f}** | |')
    if summary['mean'] is not None:
        lines.append(f'| **mean** ({summary["num_tasks"]} tasks) | | | **{100 * summary["mean"]:.1f}** | |')
    table = '\n'.join(lines) + '\n'
    with open(os.path.join(workdir, 'results.md'), 'w') as f:
        f.write(table)
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    from vit_jax import config_utils

    try:
        rest, overrides = config_utils.split_overrides(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # A --config.X without a value.
        print(f'error: {e}', file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog='python -m experiments.vtab1k.run', description=__doc__.split('\n\n')[0])
    p.add_argument('--workdir', required=True)
    p.add_argument('--tasks', default='all', help='Comma-separated task names (default: all 19).')
    p.add_argument('--lrs', default=','.join(f'{x:g}' for x in vtab_config.LR_GRID),
                   help='Learning rates swept on train800/val200; one value skips the selection.')
    p.add_argument('--steps', type=int, default=vtab_config.STEPS)
    args = p.parse_args(rest)
    names = list(tasks_lib.TASKS_BY_NAME) if args.tasks == 'all' else [t.strip() for t in args.tasks.split(',')]
    unknown = [n for n in names if n not in tasks_lib.TASKS_BY_NAME]
    if unknown:
        print(f'error: unknown task(s) {unknown}; tasks: {", ".join(tasks_lib.TASKS_BY_NAME)}', file=sys.stderr)
        return 2
    if not any(k == 'init_from.path' for k, _ in overrides):
        print('warning: no --config.init_from.path: the models are trained from scratch.', file=sys.stderr)
    results = run_sweep(args.workdir, [tasks_lib.TASKS_BY_NAME[n] for n in names],
                        [float(x) for x in args.lrs.split(',')], steps=args.steps, overrides=overrides)
    print(write_tables(args.workdir, results))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
