"""One VTAB-1k run: fine-tune a pretrained ViT on one task (ViT paper App. B.1.1).

    # Hyper-parameter selection run: train on train800, evaluate on val200.
    python -m vit_jax.main --config=experiments/vtab1k/config.py:caltech101,hp,lr=0.01 \\
        --workdir=workdirs/vtab/caltech101/hp_lr0.01 --config.init_from.path=ViT-B_16.npz
    # Final run: train on train800val200 (1000 examples), evaluate on the test split.
    python -m vit_jax.main --config=experiments/vtab1k/config.py:caltech101,lr=0.01 \\
        --workdir=workdirs/vtab/caltech101/final --config.init_from.path=ViT-B_16.npz

`experiments/vtab1k/run.py` runs the whole sweep and writes the table. Argument: `TASK[,hp][,lr=LR][,steps=N]`
with TASK one of the 19 names in `tasks.py` (the ViT paper's Table 9 order).

Settings (paper: "lr 0.01, 2500 steps, batch 512, 384 px for all tasks"): SGD momentum 0.9, no weight decay, grad
clip 1, cosine decay after 500 warm-up steps (the release's default warm-up; not stated for VTAB in the paper),
images resized to 384x384 for training and evaluation with no random crop or flip (crops and flips would change
the labels of the structured tasks; BiT's VTAB setting), pixels in [-1, 1], the model's head and pre_logits
replaced by a zero-initialised head. Other models: `--config.model.name=ViT-L/16`. Figures to expect (paper
Table 9 / 2): ViT-L/16 ImageNet-21k 72.72 mean over the 19 tasks (natural 83.3, specialized 84.7, structured
57.5); ViT-H/14 JFT 77.63. Not measured here (no TFDS data, no accelerators in this environment).
"""

from configs import common
from experiments.vtab1k import tasks
from vit_jax import config_utils


def load_tasks():
    """The `tasks` module (importing it registers the `vtab1k:<task>` dataset)."""
    return tasks


STEPS = 2500
LR = 0.01
LR_GRID = (0.001, 0.003, 0.01, 0.03)  # Swept by run.py on train800/val200 (the paper's final choice: 0.01).


def task_config(task, *, hp: bool = False, lr: float = LR, steps: int = STEPS, model_name: str = 'ViT-B/16'):
    """The training config of one VTAB-1k run of `task` (a `tasks.Task`)."""
    c = config_utils.base_config()
    c.dataset = task.dataset_name
    c.model = dict(name=model_name, num_classes=task.num_classes, image_size=384, representation_size=None,
                   classifier='token', dropout_rate=0.0, dtype='auto')  # bfloat16 compute on GPU/TPU.
    c.data.train_split = task.train800 if hp else task.train800val200
    c.data.train_pp = 'resize'
    c.data.eval_pp = 'resize'
    c.data.flip = False
    c.data.value_range = (-1.0, 1.0)
    c.data.shuffle_buffer = 1000
    c.batch_size = 512
    c.total_steps = int(steps)
    c.log_every = 50
    c.eval_every = 0
    c.checkpoint_every = 0
    c.keep_checkpoints = 1
    c.optimizer = dict(c.optimizer, name='sgd', momentum=0.9, weight_decay=0.0, grad_clip_norm=1.0, accum_steps=1,
                       ema_decay=None, accumulator_dtype='bfloat16')
    c.lr = dict(base=float(lr), warmup_steps=min(500, max(int(steps) // 5, 1)), decay='cosine', end=0.0)
    c.objective = dict(type='classification', label_smoothing=0.0, loss='softmax')
    c.evals = dict(val=dict(type='classification', split=task.val200 if hp else task.test, every=0))
    c.init_from = dict(path=None, dont_load=('head/.*', 'pre_logits/.*'), old_grid=None)
    c.vtab = dict(task=task.name, group=task.group, mode='hp' if hp else 'final')
    return c


def get_config(arg: str | None = None):
    arg = common.parse_arg(arg, task='caltech101', hp=False, lr=LR, steps=STEPS)
    if arg.task not in tasks.TASKS_BY_NAME:
        raise ValueError(f'Unknown VTAB-1k task {arg.task!r}; tasks: {", ".join(tasks.TASKS_BY_NAME)}.')
    return task_config(tasks.TASKS_BY_NAME[arg.task], hp=arg.hp, lr=arg.lr, steps=arg.steps)
