"""Miniature copies of the real-world SR data sets, in their real layouts and names, from scikit-image photos.

The photos are degraded as in :mod:`d2csr.data.photo_pairs` (blur, downsampling, noise, JPEG). The trees keep
the size relations found in the downloads: LR = HR / scale (RealSR V3, DRealSR, D2CRealSR), LR stored at HR
size (RealSR before V3, ``lq_at_gt_size=True``), and HR a few pixels larger than scale x LR (``extra``).
"""
import os
import os.path as osp

import cv2
import numpy as np

from d2csr.data.photo_pairs import crop_to_multiple, degrade, load_photo


def _write(path, rgb):
    os.makedirs(osp.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def make_pair(photo, scale, side, seed, extra=0, lq_at_gt_size=False):
    """``(hr, lr)`` RGB uint8: an HR crop of ``photo`` (``side`` px, multiple of ``scale``, plus ``extra`` px
    of real image below and to the right) and its degraded LR (``side / scale``, or upsampled back to HR size)."""
    img = load_photo(photo)
    hr = crop_to_multiple(img, scale, side)
    h, w = hr.shape[:2]
    lr = degrade(hr, scale, np.random.default_rng(seed))
    if extra:
        top, left = (img.shape[0] - hr.shape[0]) // 2, (img.shape[1] - hr.shape[1]) // 2
        hr = img[top:top + h + extra, left:left + w + extra]  # same top-left corner, a few real pixels more
        assert hr.shape[:2] == (h + extra, w + extra), 'photo too small for the extra border'
    if lq_at_gt_size:
        lr = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    return hr, lr


def realsr_tree(root, scale=4, train=(('Canon', 'astronaut'), ('Canon', 'rocket'), ('Nikon', 'coffee')),
                test=(('Canon', 'chelsea'), ('Nikon', 'camera')), side=96, extra_for=('rocket', ), lq_at_gt_size=False):
    """``root/<Camera>/<Train|Test>/<scale>/<Camera>_NNN_HR.png`` + ``<Camera>_NNN_LR<scale>.png``."""
    for split, photos in (('Train', train), ('Test', test)):
        counters = {}
        for i, (camera, photo) in enumerate(photos):
            counters[camera] = counters.get(camera, 0) + 1
            stem = f'{camera}_{counters[camera]:03d}'
            hr, lr = make_pair(photo, scale, side, [scale, i, split == 'Train'], extra=3 if photo in extra_for else 0,
                               lq_at_gt_size=lq_at_gt_size)
            folder = osp.join(root, camera, split, str(scale))
            _write(osp.join(folder, f'{stem}_HR.png'), hr)
            _write(osp.join(folder, f'{stem}_LR{scale}.png'), lr)
    return root


def drealsr_tree(root, scale=4, train=('astronaut', 'rocket'), test=('chelsea', 'coffee'), side=96, naming='public'):
    """``root/x<s>/Train_x<s>/train_HR/DSC_NNNN_x<s>_K.png`` (+ ``_x1_K`` LR) and ``Test_x<s>/test_*``
    (``DSC_NNNN_x<s>.png`` HR in ``test_HR``, ``DSC_NNNN_x1.png`` LR in ``test_LR``): the naming of the public
    download. ``naming='x1_hr'``: the reverse (HR ``_x1``, LR ``_x<s>``); ``'swapped_folders'``: the public
    names with the HR files in ``*_LR`` and the LR files in ``*_HR``."""
    hr_token, lr_token = ('x1', f'x{scale}') if naming == 'x1_hr' else (f'x{scale}', 'x1')
    for split, photos in (('train', train), ('test', test)):
        base = osp.join(root, f'x{scale}', f'{split.capitalize()}_x{scale}')
        hr_dir, lr_dir = (f'{split}_LR', f'{split}_HR') if naming == 'swapped_folders' else (f'{split}_HR', f'{split}_LR')
        for i, photo in enumerate(photos):
            hr, lr = make_pair(photo, scale, side, [scale, i, 7])
            suffix = f'_{i + 1}' if split == 'train' else ''
            stem = f'DSC_{1450 + i:04d}'
            _write(osp.join(base, hr_dir, f'{stem}_{hr_token}{suffix}.png'), hr)
            _write(osp.join(base, lr_dir, f'{stem}_{lr_token}{suffix}.png'), lr)
    return root


def d2crealsr_tree(root, train=('astronaut', 'rocket'), test=('coffee', ), side=128):
    """``root/{train,test}_HR/NNN.png`` + ``root/{train,test}_LR/NNN.png`` at x8."""
    for split, photos in (('train', train), ('test', test)):
        for i, photo in enumerate(photos):
            hr, lr = make_pair(photo, 8, side, [8, i, split == 'train'])
            _write(osp.join(root, f'{split}_HR', f'{i + 1:03d}.png'), hr)
            _write(osp.join(root, f'{split}_LR', f'{i + 1:03d}.png'), lr)
    return root


def camera_pairs_tree(root, scale=4, photos=('astronaut', 'coins'), side=96):
    """A user's own captures: ``root/HR/IMG_000N.png`` with ``root/LR/IMG_000N_lr.png``."""
    for i, photo in enumerate(photos):
        hr, lr = make_pair(photo, scale, side, [scale, i, 3])
        _write(osp.join(root, 'HR', f'IMG_{i + 1:04d}.png'), hr)
        _write(osp.join(root, 'LR', f'IMG_{i + 1:04d}_lr.png'), lr)
    return root


def write_pair_list(path, pairs, sep='\t'):
    """The authors' list: ``lr_path<sep>hr_path`` per line."""
    with open(path, 'w') as f:
        f.writelines(f'{lq}{sep}{gt}\n' for lq, gt in pairs)
    return path


def read_rgb(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[..., ::-1]
