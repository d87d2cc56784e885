"""Options dicts for short D2C runs on a folder-pair tree (``<root>/{train,val}/{HR,LR}``, e.g. the photographs of
:func:`d2csr.data.photo_pairs.build_photo_pairs`).

The demo (``scripts/demo.py``), the evidence script (``benchmarks/d2c_evidence.py``) and the tests build their
option files here, so each is the same BasicSR experiment with its own length and sizes. The paper's settings
are the files in ``options/``; these dicts follow their structure::

    opt = train_options('D2C_demo_div', 'divergence', 'demo_output/data', network, total_iter=500)
    opt = train_options(..., overrides={'train:optim_g:lr': 1e-4})   # 'a:b' keys reach into nested dicts
"""
import copy
import os.path as osp

# The divergence term as options/train_D2C_div_*.yml ship it (tests/test_divergence_acts.py checks that they agree):
# alpha chosen by the sweep in docs/evidence.md, the authors' margins (both defined in d2csr.losses).
from d2csr.losses.d2csr_losses import AUTHORS_ALPHA, DIVERGENCE_ALPHA, DIVERGENCE_MARGINS  # noqa: F401  (re-exported)


def set_option(opt, key, value):
    """Set ``opt[a][b]... = value`` for ``key = 'a:b:...'`` (missing dicts on the way are made)."""
    target = opt
    *parents, last = key.split(':')
    for parent in parents:
        target = target.setdefault(parent, {})
    target[last] = value


def paired_folders(name, root, **extra):
    """A BasicSR ``PairedImageDataset`` over ``root/HR`` and ``root/LR`` (same file names), read from disk."""
    return dict(name=name, type='PairedImageDataset', dataroot_gt=osp.join(str(root), 'HR'),
                dataroot_lq=osp.join(str(root), 'LR'), filename_tmpl='{}', io_backend=dict(type='disk'), **extra)


def y_channel_metrics(scale):
    """PSNR and SSIM on the Y channel with ``scale`` pixels cropped at each border (the paper's protocol)."""
    return dict(psnr=dict(type='calculate_psnr', crop_border=scale, test_y_channel=True),
                ssim=dict(type='calculate_ssim', crop_border=scale, test_y_channel=True))


def divergence_loss(network, alpha=DIVERGENCE_ALPHA):
    """The shipped ``DivergenceLoss`` for the tree ``network`` (the authors' margins per level, theta 0.8, Y, per
    image; alpha constant)."""
    depth, width = network.get('depth', 2), network.get('width', 2)
    margins = [DIVERGENCE_MARGINS[0]] + [DIVERGENCE_MARGINS[1]] * (depth - 1)
    return dict(type='DivergenceLoss', alpha=alpha, margins=margins, theta=0.8, gray='y', norm='image', depth=depth,
                width=width)


def train_options(name, stage, data_root, network, total_iter, *, pretrain=None, num_gpu=0, gt_size=128,
                  batch_size=4, enlarge_ratio=100, num_workers=0, lr=5e-4, milestones=None, alpha=DIVERGENCE_ALPHA,
                  amp=None, validate=True, val_freq=None, print_freq=None, checkpoint_freq=None, overrides=None):
    """Options of one training stage (``'divergence'``, ``'convergence'`` or ``'joint'``) of a D2CModel.

    Args:
        name: experiment name (BasicSR's ``experiments/<name>``).
        data_root: folder with ``train/{HR,LR}`` and, when ``validate``, ``val/{HR,LR}``.
        network: the ``network_g`` dict (copied); its ``upscale`` is the scale.
        pretrain: weights to start from (stage 2: the stage-1 tree).
        gt_size, batch_size, enlarge_ratio, num_workers: the training data loader's settings.
        lr, milestones: Adam's learning rate, halved at ``milestones`` (default: at 70% of ``total_iter``).
        alpha: the divergence term's weight (stages ``divergence`` / ``joint``); default the shipped one.
        amp: ``'bf16'`` / ``'fp16'`` / ``None`` for training and validation.
        val_freq, print_freq, checkpoint_freq: default half, a tenth and all of ``total_iter``.
        overrides: ``{'a:b': value}`` set last (:func:`set_option`).
    """
    scale = network['upscale']
    opt = dict(
        name=name, model_type='D2CModel', scale=scale, num_gpu=num_gpu, manual_seed=0,
        datasets=dict(train=paired_folders('photos_train', osp.join(str(data_root), 'train'), gt_size=gt_size,
                                           use_hflip=True, use_rot=True, num_worker_per_gpu=num_workers,
                                           batch_size_per_gpu=batch_size, dataset_enlarge_ratio=enlarge_ratio)),
        network_g=copy.deepcopy(network),
        path=dict(pretrain_network_g=pretrain, strict_load_g=True, resume_state=None),
        train=dict(stage=stage, ema_decay=0, amp=amp, optim_g=dict(type='Adam', lr=lr, betas=[0.9, 0.999]),
                   scheduler=dict(type='MultiStepLR', milestones=milestones or [int(total_iter * 0.7)], gamma=0.5),
                   total_iter=total_iter, warmup_iter=-1),
        logger=dict(print_freq=print_freq or max(total_iter // 10, 1),
                    save_checkpoint_freq=checkpoint_freq or total_iter, use_tb_logger=False))
    if validate:
        opt['datasets']['val'] = paired_folders('photos_val', osp.join(str(data_root), 'val'))
        opt['val'] = dict(val_freq=val_freq or max(total_iter // 2, 1), save_img=False, amp=amp,
                          metrics=y_channel_metrics(scale))
    if stage in ('divergence', 'joint'):
        opt['train']['divergence_opt'] = divergence_loss(network, alpha)
    if stage in ('convergence', 'joint'):
        opt['train']['convergence_opt'] = dict(type='ConvergenceLoss')
    for key, value in (overrides or {}).items():
        set_option(opt, key, value)
    return opt


def test_options(name, data_root, network, weights, *, num_gpu=0, amp=None, save_img=True):
    """Options of ``d2csr/test.py`` for ``weights`` (a ``params`` checkpoint) on ``data_root/val/{HR,LR}``."""
    return dict(name=name, model_type='D2CModel', scale=network['upscale'], num_gpu=num_gpu, manual_seed=0,
                datasets=dict(test_1=paired_folders('photos_val', osp.join(str(data_root), 'val'))),
                network_g=copy.deepcopy(network),
                path=dict(pretrain_network_g=weights, strict_load_g=True, param_key_g='params'),
                val=dict(save_img=save_img, suffix=None, amp=amp, metrics=y_channel_metrics(network['upscale'])))
