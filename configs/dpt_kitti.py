"""DPT fine-tuned for depth on KITTI (Eigen split): `configs/dpt_kitti.py:DATA_ROOT[,VARIANT][,init=PATH]`.

    python -m vit_jax.main --config=configs/dpt_kitti.py:/data/kitti_eigen,Hybrid --workdir=DIR

KITTI depth is not in TFDS: prepare the Eigen split as DATA_ROOT/{train,test}/images/*.png with
depth/<stem>.png (16-bit, metres x 256: the KITTI convention, data config depth_png_scale=1/256), read with
'dense_folder:'. Input 352x1216 crops (the released model's size); MiDaS loss in disparity; Adam with the backbone
at 1/10 of the decoder's learning rate. Evaluation: Garg crop, depth capped at 80 m, per-image scale and shift in
inverse depth (the released metric model instead uses scale 6.016e-5 and shift 0.00579: model.depth_scale /
depth_shift with evals.val.prediction='depth', align='none'). Paper (fine-tuned DPT-Hybrid): delta1 0.959, delta2
0.995, delta3 0.999, AbsRel 0.062, RMSE 2.573, RMSE-log 0.092. Schedule and augmentation here are this
repository's choice (unverified); not reproduced here.
"""

from configs import common


def get_config(arg=None):
    root = common.OneOf('/path/to/kitti_eigen', lambda word: '/' in word, what='a data root (a path with a /)')
    arg = common.parse_arg(arg, root=root, variant='Hybrid', init=None)
    return common.dpt_depth_finetune(
        arg.variant, init=arg.init, dataset=f'dense_folder:{arg.root}', image_size=(352, 1216),
        data=dict(train_split='train', flip=False, depth_png_scale=1 / 256,
                  train_pp='dense_decode|dense_random_crop(cat_max_ratio=1.0)|dense_flip|photometric',
                  eval_pp='dense_decode|dense_fit', eval_scale=(1216, 352)),
        batch_size=8, steps=40_000, max_depth=80.0, evals=dict(split='test', batch_size=4, crop='garg'))
