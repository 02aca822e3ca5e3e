"""The one trainer: state, sharding, loop, checkpoints, metrics, evaluators, progress.

    from vit_jax import train
    result = train.train_and_evaluate(config, workdir)   # {'step': ..., 'val/accuracy': ..., 'checkpoint': ...}

Methods plug in through `config.objective.type` (loss, metrics, groups, frozen networks) and `config.evals`; this
loop does not change per paper. Everything is `jax.jit` over a ('data', 'fsdp') device mesh with NamedShardings.
Running the same command on the same workdir resumes from the latest checkpoint with the same batches and RNG.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, config_utils, evaluators, lock, models, objectives, sharding
from vit_jax.evaluators.base import Context
from vit_jax.objectives.base import tree_all_finite

log = logging.getLogger(__name__)


class MetricWriter:
    """Writes `metrics.jsonl` (one JSON object per logged step) and TensorBoard events; process 0 only.

    `resume_step`: the step the run restarts from (0 for a fresh start). Rows of `metrics.jsonl` after it (written by
    the interrupted run after its last checkpoint, and a line cut off by a kill) are dropped (the file is rewritten
    atomically), so each step appears once; `rerun_evals` also drops the evaluation rows at `resume_step` (a finished
    run started again evaluates its final step again). TensorBoard gets a new event file that starts with a
    `SessionLog.START` at `resume_step`, which makes event readers (TensorBoard, `EventAccumulator`) purge the earlier
    files' events from that step on, followed by the kept rows of `resume_step` again. Scalars are `simple_value`
    summaries, which `EventAccumulator(...).Scalars(tag)` reads.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, resume_step: Optional[int] = None,
                 rerun_evals: bool = False):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if not self.enabled:
            return
        kept = self._drop_rows_after(int(resume_step), rerun_evals) if resume_step is not None else []
        if tensorboard:
            try:
                from tensorboard.compat.proto import event_pb2
                from tensorboard.summary.writer.event_file_writer import EventFileWriter

                self._tb = EventFileWriter(os.path.join(workdir, 'tensorboard'))
                start = event_pb2.Event(wall_time=time.time(), step=int(resume_step or 0),
                                        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
                self._tb.add_event(start)
                for row in kept:  # Purged with everything at resume_step by the START event: written again.
                    self._write_events(row)
                self._tb.flush()
            except Exception as e:  # TensorBoard is a nicety; metrics.jsonl is the record.
                log.warning('TensorBoard writer unavailable: %s', e)
                self._tb = None

    def _drop_rows_after(self, step: int, rerun_evals: bool) -> list[dict]:
        """Rewrites metrics.jsonl without the rows after `step`; returns the kept rows of `step`."""
        if not os.path.exists(self.path):
            return []
        keep, at_step, dropped = [], [], 0
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    row_step = int(row['step'])
                except (ValueError, KeyError, TypeError):  # A line cut off by the kill.
                    dropped += 1
                    continue
                is_eval = not any(k.startswith('train/') for k in row)
                if row_step < step or (row_step == step and not (rerun_evals and is_eval)):
                    keep.append(line if line.endswith('\n') else line + '\n')
                    if row_step == step:
                        at_step.append(row)
                else:
                    dropped += 1
        if dropped:
            tmp = f'{self.path}.tmp'
            with open(tmp, 'w') as f:
                f.writelines(keep)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            log.info('metrics.jsonl: dropped %d row(s) after step %d (written before the restart).', dropped, step)
        return at_step

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {'step': int(step)}
        row.update({k: _to_py(v) for k, v in metrics.items()})
        with open(self.path, 'a') as f:
            f.write(json.dumps(row, allow_nan=False) + '\n')
        if self._tb is not None:
            try:
                self._write_events(row)
                self._tb.flush()
            except Exception as e:  # Never lose a run to the event writer; metrics.jsonl already has the row.
                log.warning('TensorBoard writer failed, disabling it: %s', e)
                self._tb = None

    def _write_events(self, row: dict[str, Any]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in row.items()
                  if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(row['step']),
                                               summary=summary_pb2.Summary(value=values)))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _to_py(v: Any) -> Any:
    """A JSON value: non-finite floats become null (JSON has no NaN/Infinity; `metrics.jsonl` stays strict JSON)."""
    v = np.asarray(v)
    if v.dtype.kind == 'f' and not np.all(np.isfinite(v)):
        v = v.astype(object)
        v[~np.isfinite(v.astype(float))] = None
    return v.item() if v.size == 1 else v.tolist()


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class _Preemption:
    """Turns SIGTERM into a flag the loop checks: the trainer then saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread (e.g. inside a notebook worker): no handler.
            self._old = None
        return self

    def _handle(self, signum, frame):
        log.warning('SIGTERM received: saving a checkpoint and stopping.')
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class ResumeMismatchError(ValueError):
    """The workdir's checkpoint was written for another model than the config's."""


class _Watchdog:
    """Ends the process with a clear error when the loop makes no progress for `timeout` seconds.

    Multi-process runs only: a dead or stuck peer otherwise blocks every other process in a collective (a train
    step, the stop-flag all-reduce, Orbax's save barrier) forever. Armed after the first step (compilation can be
    long), paused during evaluation.
    """

    def __init__(self, timeout: float):
        self.timeout = float(timeout)
        self._since: Optional[float] = None
        self._what = ''
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def poke(self, what: str) -> None:
        self._what = what
        self._since = time.monotonic()
        if self._thread is None and self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name='vit-jax-watchdog', daemon=True)
            self._thread.start()

    def pause(self) -> None:
        self._since = None

    def _watch(self) -> None:
        while not self._stop.wait(min(max(self.timeout / 10, 0.5), 10.0)):
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                msg = (f'No progress for {self.timeout:.0f} s after {self._what} (process {jax.process_index()} of '
                       f'{jax.process_count()}): another process is dead or stuck. Stopping this one; rerun the same '
                       'command to resume from the last checkpoint. Raise --config.peer_timeout_seconds if steps or '
                       'saves legitimately take longer.')
                log.error(msg)
                print(f'Error: {msg}', file=sys.stderr, flush=True)
                os._exit(1)  # The main thread is blocked in a collective: only a hard exit ends it.

    def close(self) -> None:
        self._stop.set()


def _any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any (an all-gather over processes; a no-op for one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([int(bool(flag))], np.int32))))


def check_resume_matches(checkpoint_dir: str, step: int, abstract_params: Any) -> None:
    """Raises ResumeMismatchError (one line) when the checkpoint at `step` holds other parameters than the model's.

    Reads Orbax's tree metadata (names and written shapes) without restoring anything; a checkpoint whose metadata
    cannot be read is left to `checkpoint.Manager.restore` (and its fall-back to older steps).
    """
    try:
        with open(os.path.join(checkpoint_dir, str(step), 'default', '_METADATA')) as f:
            tree = json.load(f)['tree_metadata']
        stored = {}
        for entry in tree.values():
            keys = [str(k['key']) for k in entry['key_metadata']]
            value = entry.get('value_metadata', {})
            if keys[0] == 'params' and not value.get('skip_deserialize', False):
                stored['/'.join(keys[1:])] = tuple(value.get('write_shape') or ())
    except Exception:  # Unreadable metadata: the restore decides.
        return
    want = {sharding._path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    missing = sorted(set(want) - set(stored))
    unexpected = sorted(set(stored) - set(want))
    # Orbax records the written (possibly per-shard) shape: a shard is never larger than, and divides, the whole.
    shapes = [f'{k} {stored[k]} in the checkpoint, {want[k]} in this config' for k in sorted(set(want) & set(stored))
              if len(stored[k]) != len(want[k]) or any(w > n or (w and n % w) for w, n in zip(stored[k], want[k]))]
    if not (missing or unexpected or shapes):
        return
    parts = ([f'shapes differ: {shapes[0]}' + (f' (and {len(shapes) - 1} more)' if len(shapes) > 1 else '')]
             if shapes else [])
    for what, names in (('not in the checkpoint', missing), ('only in the checkpoint', unexpected)):
        if names:
            parts.append(f'{len(names)} parameter(s) {what}, e.g. {names[0]}')
    raise ResumeMismatchError(
        f'Cannot resume from {checkpoint_dir}/{step}: it was written for another model ({"; ".join(parts)}). Use a '
        'new --workdir for a changed model, or --config.init_from.path=<that workdir> to start from its weights.')


def default_workdir(config: Any) -> str:
    """A fresh folder under ./workdirs named after the model and the time."""
    name = str(config.model.name).replace('/', '_').replace('+', '_')
    return os.path.join('workdirs', f'{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}')


def build_model(config: Any):
    """The model named by `config.model.name` with the other `config.model` fields as overrides."""
    kw = dict(config.model)
    name = kw.pop('name')
    return models.get_model(name, **kw)


def model_image_size(model: Any) -> tuple[int, int]:
    """The (h, w) the model expects (from its input shape: NHWC or NTHWC)."""
    shape = models.input_shape(model, 1)
    return tuple(shape[-3:-1])


def _bad_fraction(train_ds: Any, bad: int, seen: int) -> float:
    """The dataset's estimate of its undecodable fraction (`Dataset.bad_fraction`), else bad / seen."""
    frac = getattr(train_ds, 'bad_fraction', None)
    return float(frac) if frac is not None else bad / max(seen, 1)


def _bad_input_error(train_ds: Any, bad: int, frac: float, max_bad: float, when: str) -> None:
    raise RuntimeError(
        f'{bad} training example(s) could not be decoded: {frac:.2%} of the training data (more than '
        f'data.max_bad_fraction={max_bad}); stopped {when}. The log names the files; fix or remove them, or raise '
        f'--config.data.max_bad_fraction to accept them ({getattr(train_ds, "name", "")}).')


def train_and_evaluate(config: Any, workdir: Optional[str] = None) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints) and returns the final figures.

    The workdir is locked for the run (`vit_jax.lock`): a second run on it refuses, a crashed run's lock is taken
    over. All processes stop at the same step on SIGTERM or `stop_at_step`, save, and return normally.
    """
    config_utils.validate(config)
    workdir = os.path.abspath(workdir or default_workdir(config))
    os.makedirs(workdir, exist_ok=True)
    held, busy = None, None
    if jax.process_index() == 0:  # One lock per workdir (process 0 speaks for the job).
        try:
            held = lock.WorkdirLock(workdir, stale_after=float(config.get('lock_stale_seconds', 300) or 300)).acquire()
        except lock.WorkdirBusyError as e:
            busy = e
    if _any_process(busy is not None):
        raise busy or lock.WorkdirBusyError(f'{workdir} is in use by another run (process 0 could not lock it).')
    cleanup: list = []
    try:
        return _train_and_evaluate(config, workdir, cleanup)
    finally:
        for fn in reversed(cleanup):
            try:
                fn()
            except Exception as e:  # Never mask the run's own error.
                log.warning('Cleanup failed: %s', e)
        if held is not None:
            held.release()


def _train_and_evaluate(config: Any, workdir: str, cleanup: list) -> dict[str, Any]:
    from vit_jax import data

    is_main = jax.process_index() == 0
    if is_main:
        with open(os.path.join(workdir, 'config.json'), 'w') as f:
            f.write(config.to_json_best_effort(indent=2))

    mesh = sharding.make_mesh(config.get('mesh', None))
    global_bs = int(config.batch_size)
    sharding.local_batch_size(global_bs, mesh)  # Checks divisibility before anything compiles.
    model = build_model(config)
    objective = objectives.build(config, model)
    image_size = model_image_size(model)
    total_steps = int(config.total_steps)

    def make_dataset(split, *, batch_size, train=False, dataset=None, data_config=None, start_step=0, **kw):
        dcfg = dict(config.get('data', {}) or {})
        dcfg.update(dict(data_config or {}))
        return data.get_dataset(dataset or config.dataset, split, data_config=dcfg,
                                batch_size=batch_size // jax.process_count(), image_size=image_size, train=train,
                                seed=int(config.seed), process_index=jax.process_index(),
                                process_count=jax.process_count(), start_step=start_step, **kw)

    ctx = Context(config=config, model=model, objective=objective, mesh=mesh, image_size=image_size,
                  make_dataset=make_dataset, workdir=workdir)
    evals = evaluators.build_all(config.get('evals', None), ctx)
    for ev in evals.values():  # Splits, datasets and batch sizes of every evaluator, before step 0.
        ev.check()

    # ---- State: shapes first, then sharded initialisation (nothing is materialised on one device). ----
    fake_batch = {'image': jax.ShapeDtypeStruct(models.input_shape(model, 1), jnp.float32)}
    objective.setup(fake_batch)  # The optimizers, from the parameters' shapes.
    rng = jax.random.PRNGKey(int(config.seed))
    state_shapes = jax.eval_shape(objective.init_state, rng, fake_batch)
    state_sharding = sharding.infer_state_sharding(state_shapes, mesh, config.get('sharding_rules', ()) or (),
                                                   min_fsdp_size=int(config.get('sharding_min_size', 2**14)))
    init_fn = jax.jit(objective.init_state, out_shardings=state_sharding, static_argnums=())
    abstract_state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                            state_shapes, state_sharding)

    # Every process creates the folder first: the Manager's start-up collectives then agree across processes.
    os.makedirs(os.path.join(workdir, 'checkpoints'), exist_ok=True)
    ckpt = checkpoint.Manager(workdir, keep=int(config.get('keep_checkpoints', 3)))
    cleanup.append(ckpt.close)  # Also on errors: an unclosed Orbax manager spews "Event loop is closed" at exit.
    start_step = 0
    if ckpt.latest_step() is not None:
        check_resume_matches(ckpt.directory, ckpt.latest_step(), abstract_state.params)
        state, start_step = ckpt.restore(abstract_state)
        print(f'Resuming from {ckpt.directory}/{start_step}.', flush=True)
    else:
        state = init_fn(rng, {'image': jnp.zeros(fake_batch['image'].shape)})
        init_cfg = config.get('init_from', None)
        if init_cfg is not None and init_cfg.get('path', None):
            params = models.load_pretrained(model, jax.device_get(state.params), init_cfg.path,
                                            dont_load=tuple(init_cfg.get('dont_load', ()) or ()),
                                            old_grid=init_cfg.get('old_grid', None),
                                            new_grid=checkpoint.model_grid(model))
            params = jax.device_put(params, state_sharding.params)
            if state.model_state:  # BatchNorm statistics / constants a converted .npz holds (model_state/...).
                model_state = checkpoint.load_pretrained_model_state(
                    jax.device_get(state.model_state), init_cfg.path,
                    dont_load=tuple(init_cfg.get('dont_load', ()) or ()))
                state = state.replace(model_state=jax.device_put(model_state, state_sharding.model_state))
            state = state.replace(params=params,
                                  ema_params=params if state.ema_params is not None else None,
                                  opt_state=jax.jit(objective.tx['model'].init,
                                                    out_shardings=state_sharding.opt_state)(params))
            print(f'Initialised from {init_cfg.path}.', flush=True)
    # Frozen networks (teachers, tokenizers, perceptual nets): on the devices once, inputs of every step, never saved.
    frozen = jax.device_put(objective.frozen, sharding.replicated(mesh))

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state_shapes.params))
    if is_main:
        print(f'{config.model.name}: {n_params:,} parameters; {jax.device_count()} devices, mesh '
              f'{dict(mesh.shape)}; batch {global_bs}; {total_steps} steps; workdir {workdir}', flush=True)
        for warning in config_utils.schedule_warnings(config):
            log.warning(warning)

    train_step = jax.jit(objective.train_step, in_shardings=(state_sharding, sharding.batch_sharding(mesh),
                                                             sharding.replicated(mesh)),
                         out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
    writer = MetricWriter(workdir, tensorboard=bool(config.get('tensorboard', True)), resume_step=start_step,
                          rerun_evals=start_step >= total_steps)
    cleanup.append(writer.close)

    def run_evals(step: int, final: bool = False) -> dict[str, float]:
        results = {}
        for name, ev in evals.items():
            if final or (ev.every and step % ev.every == 0):
                t0 = time.time()
                for k, v in ev.run(state).items():
                    results[f'{name}/{k}'] = v
                results[f'{name}/seconds'] = time.time() - t0
        if results:
            writer.write(step, results)
            if is_main:
                shown = ', '.join(f'{k} {v:.4f}' for k, v in results.items()
                                  if isinstance(v, float) and not k.endswith('seconds'))
                print(f'[eval] step {step}: {shown}', flush=True)
        return results

    log_every = max(int(config.get('log_every', 50)), 1)
    ckpt_every = int(config.get('checkpoint_every', 0) or 0)
    on_nonfinite = config.get('on_nonfinite', 'stop')
    stop_at = int(config.get('stop_at_step', 0) or 0)
    train_ds = make_dataset(config.data.get('train_split', 'train'), batch_size=global_bs, train=True,
                            start_step=start_step)
    # Batches i+1, i+2 are read and put on the devices while step i runs (order unchanged: resume stays exact).
    train_iter = sharding.prefetch_to_device(iter(train_ds), mesh, size=int(config.data.get('device_prefetch', 2)))
    max_bad = float(config.data.get('max_bad_fraction', 0.01) or 0.0)
    if getattr(train_ds, 'num_skipped', 0) and _bad_fraction(train_ds, train_ds.num_skipped, 0) > max_bad:
        _bad_input_error(train_ds, train_ds.num_skipped, _bad_fraction(train_ds, train_ds.num_skipped, 0), max_bad,
                         f'before step {start_step}')  # Unreadable files found when the dataset was built.
    step = start_step
    pending: list[tuple[int, dict]] = []
    t_window, steps_window, t_start = time.time(), 0, time.time()
    skipped_updates = 0
    history: list[dict[str, float]] = []
    last_eval: dict[str, float] = {}
    preempted = False
    last_saved = ckpt.latest_step()
    state_finite = jax.jit(lambda st: tree_all_finite(
        st.params, st.opt_state, st.model_state, st.ema_params, st.extra), out_shardings=sharding.replicated(mesh))
    multi = jax.process_count() > 1
    watchdog = _Watchdog(float(config.get('peer_timeout_seconds', 1800) or 0) if multi else 0.0)
    cleanup.append(watchdog.close)

    def stop_on_nonfinite() -> None:
        """With on_nonfinite='stop': raises at the first non-finite step not yet checked (nothing is saved after
        it, so the latest checkpoint is the last good one and keep_checkpoints never deletes all good ones)."""
        if on_nonfinite != 'stop':
            return
        for s, m in pending:
            if float(jax.device_get(m['nonfinite'])) > 0:
                m = jax.device_get(m)
                bad = [k for k, v in m.items() if k != 'nonfinite' and not np.all(np.isfinite(v))] or ['update']
                ckpt.wait()
                good = ckpt.latest_step()
                where = (f'The last good checkpoint is {ckpt.directory}/{good} (step {good}).' if good is not None
                         else 'There is no last good checkpoint: none was written before it.')
                raise FloatingPointError(
                    f'Non-finite {", ".join(bad)} at step {s}: the update was not applied and training stopped. '
                    f'{where} Lower the learning rate (or raise optimizer.eps), or set --config.on_nonfinite=skip '
                    'to skip such updates.')

    def save(force: bool = False) -> None:
        """Saves `state` at `step` unless already saved there; never from a non-finite step or state."""
        nonlocal last_saved
        if last_saved == step:
            return  # The periodic save already wrote this step (SIGTERM / stop_at_step on a checkpoint step).
        stop_on_nonfinite()
        if not bool(jax.device_get(state_finite(state))):
            raise FloatingPointError(
                f'The train state holds non-finite values at step {step}: not saving it. The last good checkpoint '
                f'is {ckpt.directory}/{last_saved}.')
        ckpt.save(step, state, force=force)
        last_saved = step

    with _Preemption() as preemption:
        while step < total_steps:
            batch = next(train_iter)
            state, metrics = train_step(state, batch, frozen)
            step += 1
            steps_window += 1
            pending.append((step, metrics))
            if step == start_step + 1 and step % log_every and step < total_steps:
                t_window, steps_window = time.time(), 0  # Speed and ETA leave out the first step's compilation.
            if step % log_every == 0 or step == total_steps:
                stop_on_nonfinite()
                fetched = jax.device_get([m for _, m in pending])
                skipped_now = sum(1 for m in fetched if m.get('nonfinite', 0.0) > 0)
                skipped_updates += skipped_now
                if skipped_now == len(fetched):
                    log.warning('Every update of steps %d-%d was non-finite and skipped (on_nonfinite=skip): the '
                                'weights are not changing. Lower the learning rate or raise optimizer.eps.',
                                pending[0][0], step)
                good = [m for m in fetched if m.get('nonfinite', 0.0) == 0] or fetched
                mean = {k: float(np.mean([m[k] for m in good])) for k in fetched[-1]}
                mean.pop('nonfinite', None)
                dt = time.time() - t_window
                mean['img_per_sec'] = steps_window * global_bs / max(dt, 1e-9)
                mean['skipped_updates'] = skipped_updates
                bad = int(getattr(train_ds, 'num_skipped', 0) or 0)
                mean['skipped_examples'] = bad
                seen = (step - start_step) * global_bs // jax.process_count() + bad
                mean['bad_fraction'] = _bad_fraction(train_ds, bad, seen)
                if bad and mean['bad_fraction'] > max_bad:
                    ckpt.wait()
                    _bad_input_error(train_ds, bad, mean['bad_fraction'], max_bad, f'at step {step}')
                writer.write(step, {f'train/{k}': v for k, v in mean.items()})
                history.append({'step': step, **mean})
                if is_main:
                    eta = (total_steps - step) * dt / max(steps_window, 1)
                    extra = ''.join(f' | {k} {mean[k]:.4f}' for k in ('accuracy',) if k in mean)
                    print(f'step {step}/{total_steps} | loss {mean["loss"]:.4f}{extra} | lr {mean["lr"]:.3g} | '
                          f'{mean["img_per_sec"]:.0f} img/s | ETA {_fmt_time(eta)}', flush=True)
                pending, t_window, steps_window = [], time.time(), 0
            # Every process stops at the same step: the SIGTERM of one process (preemption signals processes at
            # different moments) is all-reduced each step, so no process waits in a collective for a peer that left.
            stop = _any_process(preemption.requested or step == stop_at)
            watchdog.poke(f'step {step}')
            if step < total_steps and not stop:
                watchdog.pause()  # Evaluations may legitimately take long.
                last_eval = run_evals(step) or last_eval
                watchdog.poke(f'the evaluation at step {step}')
            if ckpt_every and step % ckpt_every == 0 and step < total_steps:
                save()
            if stop:
                save(force=True)
                ckpt.wait()
                preempted = True
                break
    result: dict[str, Any] = {'step': step, 'workdir': workdir, 'preempted': preempted, 'history': history}
    if not preempted:
        save(force=True)  # The final checkpoint first: a failing final evaluation must not lose the run.
        ckpt.wait()
        watchdog.pause()
        last_eval = run_evals(step, final=True) or last_eval
    ckpt.wait()
    result.update(last_eval)
    result['checkpoint'] = os.path.join(ckpt.directory, str(ckpt.latest_step()))
    result['seconds'] = time.time() - t_start
    result['state'] = state
    if is_main:
        figures = ', '.join(f'{k} {v:.4f}' for k, v in last_eval.items()
                            if isinstance(v, float) and not k.endswith('seconds'))
        status = 'Done' if not preempted else ('Stopped (stop_at_step)' if step == stop_at and not preemption.requested
                                                  else 'Preempted')
        tb = os.path.join(workdir, 'tensorboard')
        print(f'Checkpoint: {result["checkpoint"]}\nMetrics: {writer.path}'
              + (f' (TensorBoard: {tb})' if os.path.isdir(tb) else ''), flush=True)
        try:  # A picture of the curves; never fail a finished run over it.
            from vit_jax.tools import plot_metrics

            print(f'Curves: {plot_metrics.plot_workdirs([workdir], os.path.join(workdir, "curves.png"))}', flush=True)
        except Exception as e:
            log.warning('Could not draw the training curves (%s); run: python -m vit_jax.tools.plot_metrics %s',
                        e, workdir)
        # The last line is the result.
        print(f'{status} at step {step} in {_fmt_time(result["seconds"])}' + (f': {figures}' if figures else '.'),
              flush=True)
    return result
