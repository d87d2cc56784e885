"""Checks of a BasicSR data set before the network runs on it (evaluation, and the training set).

BasicSR's ``PairedImageDataset`` (and any data set with ``paths``) does not look at its images until they
are loaded: an empty folder ends validation with ``UnboundLocalError``, and an HR that is not exactly
``scale x`` its LR with an ``AssertionError`` from the metric after the network has run; in training, a
``gt_size`` larger than an image stops the first batch with a message that says to delete the image.
:func:`check_eval_dataset` reads the file headers (nothing is decoded) and says what is wrong first.
d2csr's own data sets check themselves when they are built (:mod:`d2csr.data.pair_align`).
"""
import os
import os.path as osp
import re

from .pair_align import image_size_or_reason
from .pair_index import DataError

ROOT_KEYS = ('dataroot', 'dataroot_gt', 'dataroot_lq', 'meta_info_file')
# the downloads (datasets/README.md): data set type -> (name, where datasets/README.md puts it, layout)
DOWNLOADS = {'RealSRDataset': ('RealSR (V3)', 'datasets/RealSR_V3', 'realsr'),
             'DRealSRDataset': ('DRealSR', 'datasets/DRealSR', 'drealsr'),
             'D2CRealSRDataset': ('D2CRealSR', 'datasets/D2CRealSR', 'd2crealsr')}
PREPARED = re.compile(r'(?P<base>.*?(?P<set>D2CRealSR|DRealSR|RealSR)_x(?P<scale>\d+))[/\\](?P<sub>[^/\\]+)')


def _how_to_make(dataset_opt, key, path):
    """The documented step that makes ``path`` (the value of ``key`` in ``dataset_opt``)."""
    kind = dataset_opt.get('type')
    if kind in DOWNLOADS:
        name, where, _ = DOWNLOADS[kind]
        return (f'it is the {name} download: put it there as downloaded (or point {key} at it), see '
                f'datasets/README.md ({where}/)')
    match = PREPARED.match(str(path).replace(os.sep, '/'))
    if match:
        layout = {'RealSR': 'realsr', 'DRealSR': 'drealsr', 'D2CRealSR': 'd2crealsr'}[match['set']]
        raw = {'realsr': 'datasets/RealSR_V3', 'drealsr': 'datasets/DRealSR', 'd2crealsr': 'datasets/D2CRealSR'}[layout]
        split = 'test' if re.search(r'test|val', match['sub'], re.I) else 'train'
        lmdb = ' --lmdb' if str(path).endswith('.lmdb') else ''
        return (f'make it with: python scripts/prepare_dataset.py {layout} --root {raw} --scale {match["scale"]} '
                f'--split {split} --out {match["base"]}/{match["sub"]}{lmdb} (datasets/README.md)')
    return 'check the path, or prepare your pairs with scripts/prepare_dataset.py (datasets/README.md)'


def check_data_roots(opt):
    """Raise :class:`DataError` listing every data-set folder or file an options file names that does not exist
    (``datasets:<phase>:dataroot`` etc.), each with the documented step that makes it; called before the run
    writes anything (BasicSR's own message is a bare ``FileNotFoundError`` from deep in the data set)."""
    problems = []
    for phase, dataset_opt in sorted(((opt or {}).get('datasets') or {}).items()):
        if not isinstance(dataset_opt, dict):
            continue
        for key in ROOT_KEYS:
            value = dataset_opt.get(key)
            if not isinstance(value, str) or not value or osp.exists(osp.expanduser(value)):
                continue
            how = _how_to_make(dataset_opt, key, value)
            problems.append(f'datasets:{phase}:{key} {value!r} does not exist; {how}.')
    if problems:
        raise DataError(f'{len(problems)} data folder(s) of the options are missing (relative paths are taken from '
                        f'the folder the command runs in, {os.getcwd()}):\n  ' + '\n  '.join(problems))


def check_eval_dataset(dataset, scale, gt_size=None):
    """Raise :class:`DataError` for an empty data set, or (disk data sets with ``paths``) every unreadable
    file, every pair whose HR is not exactly ``scale x`` LR and (training, ``gt_size``) every HR smaller than
    ``gt_size``, all at once."""
    if getattr(dataset, '_d2csr_checked', False):
        return
    opt = getattr(dataset, 'opt', {}) or {}
    name = opt.get('name', type(dataset).__name__)
    if len(dataset) == 0:
        where = ', '.join(f'{k}: {opt[k]}' for k in ('dataroot_gt', 'dataroot_lq', 'dataroot', 'meta_info_file')
                          if opt.get(k))
        raise DataError(f'{name}: the data set is empty ({where or "no data roots given"}); check the paths '
                        '(relative ones are taken from where you run the command) and filename_tmpl.')
    if getattr(dataset, 'checks_own_sizes', False) or (opt.get('io_backend') or {}).get('type', 'disk') != 'disk':
        return
    paths = getattr(dataset, 'paths', None)
    if not isinstance(paths, list) or not paths or not isinstance(paths[0], dict) or 'gt_path' not in paths[0]:
        return
    problems = []
    for pair in paths:
        gt_hw, gt_why = image_size_or_reason(pair['gt_path'])
        lq_hw, lq_why = image_size_or_reason(pair['lq_path'])
        if gt_hw is None or lq_hw is None:
            problems += [f'{p}: {why}' for p, why in ((pair['gt_path'], gt_why), (pair['lq_path'], lq_why)) if why]
        elif tuple(gt_hw) != (lq_hw[0] * scale, lq_hw[1] * scale):
            problems.append(f'{osp.basename(pair["gt_path"])} ({gt_hw[0]}x{gt_hw[1]}) / '
                            f'{osp.basename(pair["lq_path"])} ({lq_hw[0]}x{lq_hw[1]}): HR is not {scale} x LR')
        elif gt_size and min(gt_hw) < gt_size:
            problems.append(f'{osp.basename(pair["gt_path"])} ({gt_hw[0]}x{gt_hw[1]}) is smaller than gt_size '
                            f'{gt_size}: lower gt_size (a multiple of {scale})')
    if not problems:
        dataset._d2csr_checked = True
        return
    if problems:
        raise DataError(f'{name} ({type(dataset).__name__}, scale {scale}): {len(problems)} problem(s), checked '
                        'before running the network:\n  ' + '\n  '.join(problems) + '\nFix `scale`, or crop the '
                        'pairs (scripts/prepare_dataset.py pairs ... --crop-size 0 writes aligned whole pairs).')
