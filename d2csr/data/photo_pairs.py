"""Small real-photo LR/HR pair sets built offline from scikit-image's bundled photographs.

Real-world SR data (RealSR, DRealSR, D2CRealSR) cannot be downloaded on every machine, so the demo, the
tests and the evidence runs build their own: real photographs degraded the way camera pipelines degrade
(optical blur, downsampling, sensor noise, JPEG). Everything is seeded, so the same call writes the same
files. The output is the layout BasicSR's ``PairedImageDataset`` reads (same names in ``HR`` and ``LR``)::

    root/train/HR/astronaut.png   root/train/LR/astronaut.png
    root/val/HR/coffee.png        root/val/LR/coffee.png
"""
import os
import os.path as osp

import cv2
import numpy as np

from d2csr.utils.image_io import image_names

# Colour photographs, then grey ones (used as 3-channel images); all ship inside scikit-image.
TRAIN_PHOTOS = ('astronaut', 'rocket', 'hubble_deep_field', 'retina', 'immunohistochemistry', 'camera', 'brick',
                'grass', 'gravel', 'coins')
VAL_PHOTOS = ('coffee', 'chelsea')


def load_photo(name):
    """A scikit-image photograph as an RGB ``uint8`` array ``(H, W, 3)``."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def degrade(hr, scale, rng, blur=(0.6, 1.6), noise=(1.0, 4.0), jpeg=(70, 95)):
    """Realistic LR of an RGB ``uint8`` HR image whose sides are multiples of ``scale``.

    Gaussian blur (sigma drawn from ``blur``, in HR pixels), bicubic downsampling by ``scale``, Gaussian
    noise (sigma drawn from ``noise``, in 8-bit levels), then JPEG (quality drawn from ``jpeg``).
    """
    h, w = hr.shape[:2]
    sigma = rng.uniform(*blur)
    img = cv2.GaussianBlur(hr.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma)
    img = cv2.resize(img, (w // scale, h // scale), interpolation=cv2.INTER_CUBIC)
    img = img + rng.normal(0.0, rng.uniform(*noise), img.shape).astype(np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    quality = int(rng.integers(jpeg[0], jpeg[1] + 1))
    ok, buf = cv2.imencode('.jpg', img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def crop_to_multiple(img, scale, max_side=None):
    """Centre-crop so both sides are multiples of ``scale`` (and at most ``max_side``, when given)."""
    h, w = img.shape[:2]
    th, tw = h - h % scale, w - w % scale
    if max_side is not None:
        th, tw = min(th, max_side - max_side % scale), min(tw, max_side - max_side % scale)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[top:top + th, left:left + tw]


def build_photo_pairs(root, scale, train=TRAIN_PHOTOS, val=VAL_PHOTOS, seed=0, max_side=None, val_max_side=None):
    """Write degraded pairs of the given photographs under ``root``; returns ``{split: (hr_dir, lr_dir)}``.

    ``max_side`` / ``val_max_side`` centre-crop large photographs (train / val) to keep runs short.
    Existing files are overwritten with identical content (the degradation is seeded per photo).
    """
    dirs = {}
    for split, names, side in (('train', train, max_side), ('val', val, val_max_side)):
        if not names:
            continue
        hr_dir, lr_dir = osp.join(root, split, 'HR'), osp.join(root, split, 'LR')
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        for index, name in enumerate(names):
            rng = np.random.default_rng([seed, scale, index, 0 if split == 'train' else 1])
            hr = crop_to_multiple(load_photo(name), scale, side)
            lr = degrade(hr, scale, rng)
            cv2.imwrite(osp.join(hr_dir, f'{name}.png'), hr[..., ::-1])
            cv2.imwrite(osp.join(lr_dir, f'{name}.png'), lr[..., ::-1])
        dirs[split] = (hr_dir, lr_dir)
    return dirs


def photo_pair_paths(root, split='val'):
    """``[(lr_path, hr_path), ...]`` of a :func:`build_photo_pairs` split, sorted by name."""
    hr_dir, lr_dir = osp.join(root, split, 'HR'), osp.join(root, split, 'LR')
    return [(osp.join(lr_dir, name), osp.join(hr_dir, name)) for name in image_names(hr_dir)]
