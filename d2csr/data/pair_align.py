"""Bring a real-world LR/HR pair to exactly ``HR = scale x LR``, and check a whole data set's sizes up front.

Real captures rarely line up exactly. Three cases are accepted:

* ``exact``: HR is ``scale x`` LR.
* ``crop_gt``: HR is a few pixels larger than ``scale x`` LR (at most :data:`GT_CROP_TOLERANCE` on each side);
  HR is cropped to ``scale x`` LR at the top left, as the authors do. (The authors' test, ``HR // LR == scale``,
  also accepts an HR of 96 beside an LR of 20 at x4, which is misaligned, not a few pixels too large.)
* ``lq_at_gt_size``: LR stored at HR size (older RealSR versions). Only with ``lq_at_gt_size: bicubic`` in the
  options: both are cropped to a multiple of the scale and LR is downsampled by the scale (bicubic).

Anything else (``mismatch``) is an error naming the pair.
"""
import os.path as osp

import cv2
import numpy as np

from .pair_index import DataError

LQ_AT_GT_SIZE_MODES = ('bicubic', )
GT_CROP_TOLERANCE = 8  # HR pixels an HR may exceed scale x LR by on each side (cropped away)


def check_lq_at_gt_size(mode, option='lq_at_gt_size'):
    if mode is not None and mode not in LQ_AT_GT_SIZE_MODES:
        raise DataError(f'{option} must be ~ (LR stored at HR size is an error) or one of {LQ_AT_GT_SIZE_MODES}, '
                        f'got {mode!r}.')
    return mode


def relation(gt_hw, lq_hw, scale):
    """``'exact'``, ``'crop_gt'``, ``'lq_at_gt_size'`` or ``'mismatch'`` for HR and LR sizes ``(h, w)``."""
    (hg, wg), (hl, wl) = gt_hw[:2], lq_hw[:2]
    if (hg, wg) == (hl * scale, wl * scale):
        return 'exact'
    if min(hg, wg, hl, wl) <= 0:
        return 'mismatch'
    if 0 <= hg - hl * scale <= GT_CROP_TOLERANCE and 0 <= wg - wl * scale <= GT_CROP_TOLERANCE:
        return 'crop_gt'
    if scale > 1 and abs(hg - hl) < scale and abs(wg - wl) < scale:
        return 'lq_at_gt_size'
    return 'mismatch'


def _name(path):
    return osp.basename(str(path))


def mismatch_message(gt_path, lq_path, gt_hw, lq_hw, scale):
    (hg, wg), (hl, wl) = gt_hw[:2], lq_hw[:2]
    ratio = f'{hg / hl:.2f} x {wg / wl:.2f}' if min(hl, wl) > 0 else 'undefined'
    return (f'{_name(gt_path)} ({hg}x{wg}) / {_name(lq_path)} ({hl}x{wl}): size ratio {ratio}, not the scale {scale} '
            f'(expected HR = {scale} x LR = {hl * scale}x{wl * scale}; an HR at most {GT_CROP_TOLERANCE} pixels larger on '
            'each side is cropped to it)')


def lq_at_gt_size_message(option='lq_at_gt_size: bicubic'):
    return (f'LR images are stored at the size of their HR (older RealSR layout); set `{option}` to downsample them '
            'by the scale (bicubic)')


def align_pair(img_gt, img_lq, scale, lq_at_gt_size=None, gt_path='', lq_path='', option='lq_at_gt_size: bicubic'):
    """Return ``(img_gt, img_lq, relation)`` with ``img_gt`` exactly ``scale x img_lq`` (HWC arrays).

    Works on ``uint8`` and on float images in ``[0, 1]`` (kept in range after resizing).
    """
    rel = relation(img_gt.shape, img_lq.shape, scale)
    if rel == 'exact':
        return img_gt, img_lq, rel
    hl, wl = img_lq.shape[:2]
    if rel == 'crop_gt':
        return img_gt[:hl * scale, :wl * scale], img_lq, rel
    if rel == 'lq_at_gt_size':
        if lq_at_gt_size is None:
            raise DataError(f'{_name(lq_path)} is the size of {_name(gt_path)} ({hl}x{wl}): '
                            f'{lq_at_gt_size_message(option)}.')
        h = min(img_gt.shape[0], hl) // scale * scale
        w = min(img_gt.shape[1], wl) // scale * scale
        img_gt, img_lq = img_gt[:h, :w], img_lq[:h, :w]
        small = cv2.resize(img_lq, (w // scale, h // scale), interpolation=cv2.INTER_CUBIC)
        if small.ndim == 2 and img_lq.ndim == 3:
            small = small[..., None]
        if np.issubdtype(small.dtype, np.floating):
            small = np.clip(small, 0, 1)
        return img_gt, small, rel
    raise DataError(f'pair {mismatch_message(gt_path, lq_path, img_gt.shape, img_lq.shape, scale)}; check `scale` '
                    'or remove the pair.')


def image_size(path):
    """``(h, w)`` of an image file from its header (Pillow, no decoding); ``None`` when it cannot be read."""
    try:
        return image_size_or_reason(path)[0]
    except Exception:  # noqa: BLE001
        return None


def image_size_or_reason(path):
    """``((h, w), None)`` from the header (no decoding; OpenCV for formats Pillow lacks), or ``(None, why)``:
    a broken link, a folder, a header claiming a huge image or an undecodable file."""
    from d2csr.utils.image_io import UnreadableImage, decode_image, header_size

    if osp.islink(path) and not osp.exists(path):
        return None, 'a broken symbolic link'
    if osp.isdir(path):
        return None, 'a folder, not an image file'
    try:
        hw = header_size(path)
        if hw is None:
            hw = decode_image(path).shape[:2]
    except UnreadableImage as err:
        return None, str(err)
    except OSError as err:
        return None, f'cannot be opened ({err.strerror or err})'
    return hw, None


def check_pair_sizes(pairs, scale, lq_at_gt_size=None, where='data set', option='lq_at_gt_size: bicubic'):
    """Check every pair's size relation; return ``{relation: [pair, ...]}`` for the accepted ones.

    Sizes come from ``pair['gt_shape']`` / ``pair['lq_shape']`` when present (LMDB), else from file headers.
    Raises :class:`DataError` listing every unreadable file, every ratio that is not ``scale`` and (without
    ``lq_at_gt_size``) every LR stored at HR size, all at once.
    """
    groups = {'exact': [], 'crop_gt': [], 'lq_at_gt_size': []}
    unreadable, mismatched, same_size = [], [], []
    for pair in pairs:
        gt_hw, gt_why = (pair['gt_shape'], None) if pair.get('gt_shape') else image_size_or_reason(pair['gt_path'])
        lq_hw, lq_why = (pair['lq_shape'], None) if pair.get('lq_shape') else image_size_or_reason(pair['lq_path'])
        bad = [f'{pair[k]} ({why})' for k, hw, why in (('gt_path', gt_hw, gt_why), ('lq_path', lq_hw, lq_why))
               if hw is None]
        if bad:
            unreadable += bad
            continue
        rel = relation(gt_hw, lq_hw, scale)
        pair['lq_hw'] = tuple(lq_hw[:2])
        if rel == 'mismatch':
            mismatched.append(mismatch_message(pair['gt_path'], pair['lq_path'], gt_hw, lq_hw, scale))
        elif rel == 'lq_at_gt_size' and lq_at_gt_size is None:
            same_size.append(f'{_name(pair["lq_path"])} ({lq_hw[0]}x{lq_hw[1]})')
        else:
            groups[rel].append(pair)
    if unreadable or mismatched or same_size:
        lines = [f'{where} (scale {scale}): {len(unreadable) + len(mismatched) + len(same_size)} problem(s), '
                 'all listed:']
        if unreadable:
            lines.append(f'  unreadable or not an image ({len(unreadable)}): ' + ', '.join(map(str, unreadable)))
        if mismatched:
            lines.append(f'  size ratio is not the scale ({len(mismatched)}):\n    ' + '\n    '.join(mismatched))
        if same_size:
            lines.append(f'  LR at HR size ({len(same_size)}): ' + ', '.join(same_size) + '\n  '
                         + lq_at_gt_size_message(option) + '.')
        raise DataError('\n'.join(lines))
    return groups
