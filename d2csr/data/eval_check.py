"""Checks of a BasicSR data set before the network runs on it (evaluation, and the training set).

BasicSR's ``PairedImageDataset`` (and any data set with ``paths``) does not look at its images until they
are loaded: an empty folder ends validation with ``UnboundLocalError``, and an HR that is not exactly
``scale x`` its LR with an ``AssertionError`` from the metric after the network has run; in training, a
``gt_size`` larger than an image stops the first batch with a message that says to delete the image.
:func:`check_eval_dataset` reads the file headers (nothing is decoded) and says what is wrong first.
d2csr's own data sets check themselves when they are built (:mod:`d2csr.data.pair_align`).

Data sets read from BasicSR LMDBs (``io_backend: {type: lmdb}``; BasicSR's ``PairedImageDataset`` or d2csr's
``PairedFolderDataset``) are checked by :func:`check_lmdb_dataset`: every key the data set will read is in its
``data.mdb`` (BasicSR's keys come from ``meta_info.txt``; a key that is not there ends the run at that batch with
a ``TypeError`` from ``imfrombytes``), ``data.mdb`` is a complete LMDB (a truncated one crashes the loader with a
bus error when it reaches the missing pages), and the sizes ``meta_info.txt`` records fit the scale and
``gt_size`` (an LMDB made for another scale).
"""
import os
import os.path as osp
import re

from .pair_align import image_size_or_reason
from .pair_index import DataError, read_lmdb_meta

LMDB_FIX = ('rebuild it with python scripts/prepare_dataset.py ... --lmdb (or BasicSR\'s '
            'scripts/data_preparation/create_lmdb.py)')

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


def data_root_problems(opt):
    """One sentence per data-set folder or file an options file names that does not exist
    (``datasets:<phase>:dataroot`` etc.), each with the documented step that makes it (BasicSR's own message is a
    bare ``FileNotFoundError`` from deep in the data set)."""
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
    return problems


def check_data_roots(opt):
    """Raise :class:`DataError` listing :func:`data_root_problems`; called before the run writes anything."""
    problems = data_root_problems(opt)
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
    backend = getattr(dataset, 'io_backend_opt', None) or opt.get('io_backend') or {}
    if backend.get('type') == 'lmdb':
        check_lmdb_dataset(dataset, scale, gt_size)
        dataset._d2csr_checked = True
        return
    if getattr(dataset, 'checks_own_sizes', False) or backend.get('type', 'disk') != 'disk':
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


def lmdb_problems(db_path, keys, what):
    """Why the LMDB folder ``db_path`` cannot serve ``keys`` (its ``what``: ``'HR'`` / ``'LR'``), as a list:
    no or an unreadable ``data.mdb``, a truncated one (checked from its header before any page is touched),
    keys it does not hold (the first few named). Empty when it can."""
    import lmdb

    data = osp.join(db_path, 'data.mdb')
    if not osp.isfile(data):
        return [f'{what} LMDB {db_path} has no data.mdb; {LMDB_FIX}.']
    try:
        env = lmdb.open(db_path, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as error:
        return [f'{what} LMDB {data} is not a readable LMDB ({type(error).__name__}: {error}); it is corrupt: '
                f'{LMDB_FIX}.']
    try:
        needed = (env.info()['last_pgno'] + 1) * env.stat()['psize']
        size = osp.getsize(data)
        if size < needed:
            return [f'{what} LMDB {data} is truncated ({size:,d} of its {needed:,d} bytes; an interrupted copy or '
                    f'write): {LMDB_FIX}.']
        with env.begin(buffers=True) as txn:
            cursor = txn.cursor()
            missing = [key for key in keys if not cursor.set_key(str(key).encode('ascii', 'backslashreplace'))]
    except lmdb.Error as error:
        return [f'{what} LMDB {data} is corrupt ({type(error).__name__}: {error}): {LMDB_FIX}.']
    finally:
        env.close()
    if missing:
        listed = ', '.join(map(str, missing[:5])) + (f' and {len(missing) - 5} more' if len(missing) > 5 else '')
        return [f'{what} LMDB {db_path}: {len(missing)} of the {len(keys)} key(s) the data set reads are not in its '
                f'data.mdb ({listed}); its meta_info.txt lists images the database does not hold (a meta_info.txt '
                f'from another LMDB, or an LMDB written only in part): {LMDB_FIX}.']
    return []


def check_lmdb_dataset(dataset, scale, gt_size=None):
    """Raise :class:`DataError` when an LMDB data set (``dataset.io_backend_opt`` with ``db_paths`` /
    ``client_keys``, ``dataset.paths`` of LMDB keys) cannot be read as it will be: see :func:`lmdb_problems`,
    plus every pair whose HR is not ``scale x`` LR and (training) every HR smaller than ``gt_size``, by the
    sizes in the LMDBs' ``meta_info.txt``; all at once."""
    backend = getattr(dataset, 'io_backend_opt', None) or {}
    paths = getattr(dataset, 'paths', None)
    if not backend.get('db_paths') or not isinstance(paths, list) or not paths or not isinstance(paths[0], dict):
        return
    name = (getattr(dataset, 'opt', None) or {}).get('name', type(dataset).__name__)
    sides = dict(zip(backend.get('client_keys', ['lq', 'gt']), backend['db_paths']))
    problems = []
    for client, db_path in sides.items():
        what = 'HR' if client == 'gt' else 'LR'
        problems += lmdb_problems(db_path, [pair[f'{client}_path'] for pair in paths], what)
    # sizes by meta_info.txt: for data sets that do not check their own (d2csr's checked every pair's sizes with
    # their own rules when they were built, HR a few pixels larger than scale x LR included)
    if not problems and not getattr(dataset, 'checks_own_sizes', False) and 'gt' in sides and 'lq' in sides:
        shapes = {}
        for client, db_path in sides.items():
            try:
                shapes[client] = {osp.splitext(n)[0]: s for n, s in read_lmdb_meta(db_path)}
            except DataError as error:
                problems.append(str(error))
        if len(shapes) == 2:
            problems += _meta_size_problems(paths, shapes, scale, gt_size)
    if problems:
        raise DataError(f'{name} ({type(dataset).__name__}, LMDB, scale {scale}): {len(problems)} problem(s), '
                        'checked before training:\n  ' + '\n  '.join(problems))


def _meta_size_problems(paths, shapes, scale, gt_size, limit=10):
    wrong, small = [], []
    for pair in paths:
        gt, lq = shapes['gt'].get(pair['gt_path']), shapes['lq'].get(pair['lq_path'])
        if gt is None or lq is None:
            continue
        if tuple(gt[:2]) != (lq[0] * scale, lq[1] * scale):
            wrong.append(f'{pair["gt_path"]} ({gt[0]}x{gt[1]}) / {pair["lq_path"]} ({lq[0]}x{lq[1]})')
        elif gt_size and min(gt[:2]) < gt_size:
            small.append(f'{pair["gt_path"]} ({gt[0]}x{gt[1]})')
    problems = []
    if wrong:
        ratio = {shapes['gt'][p['gt_path']][0] / max(shapes['lq'][p['lq_path']][0], 1) for p in paths
                 if p['gt_path'] in shapes['gt'] and p['lq_path'] in shapes['lq']}
        made = f' (these LMDBs were made for scale {ratio.pop():g})' if len(ratio) == 1 else ''
        problems.append(f'{len(wrong)} pair(s) whose HR is not {scale} x LR by meta_info.txt{made}, e.g. '
                        f'{"; ".join(wrong[:limit])}: point dataroot_gt / dataroot_lq at the LMDBs of scale {scale}, '
                        'or set scale to the LMDBs\' factor.')
    if small:
        problems.append(f'{len(small)} HR image(s) smaller than gt_size {gt_size}, e.g. {"; ".join(small[:limit])}: '
                        f'lower gt_size (a multiple of {scale}).')
    return problems


def check_lmdb_roots(dataset_opt):
    """Before BasicSR's ``PairedImageDataset`` is built on LMDBs (``io_backend: {type: lmdb}``): both roots are
    BasicSR LMDBs with a readable ``meta_info.txt`` listing the same keys. BasicSR would stop with a bare
    ``ValueError`` / ``FileNotFoundError`` / ``AssertionError`` ("Keys in lq_folder and gt_folder are
    different"). Raises :class:`DataError` naming the folders and the keys."""
    if dataset_opt.get('type') != 'PairedImageDataset' or (dataset_opt.get('io_backend') or {}).get('type') != 'lmdb':
        return
    name = dataset_opt.get('name', 'PairedImageDataset')
    keys = {}
    for side, option in (('HR', 'dataroot_gt'), ('LR', 'dataroot_lq')):
        root = dataset_opt.get(option)
        try:
            keys[side] = {osp.splitext(n)[0] for n, _ in read_lmdb_meta(root)}
        except DataError as error:
            raise DataError(f'{name}: {option}: {error}') from None
    only_gt, only_lq = sorted(keys['HR'] - keys['LR']), sorted(keys['LR'] - keys['HR'])
    if only_gt or only_lq:
        def some(names):
            return ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
        sides = [f'{len(n)} only in the {s} LMDB ({some(n)})' for s, n in (('HR', only_gt), ('LR', only_lq)) if n]
        raise DataError(f'{name}: the LMDBs {dataset_opt["dataroot_gt"]} and {dataset_opt["dataroot_lq"]} do not '
                        f'hold the same keys: {"; ".join(sides)}. BasicSR pairs them by key: make both from the '
                        f'same pairs ({LMDB_FIX}).')
