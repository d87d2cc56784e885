"""Prepare real-world SR pairs the BasicSR way (``scripts/prepare_dataset.py`` is the command line).

For every pair (found by :mod:`d2csr.data.pair_index`, aligned by :mod:`d2csr.data.pair_align`) it writes
sub-images with the same names into ``OUT/HR`` and ``OUT/LR``, cropped consistently (the HR crop is ``scale x``
the LR crop, at ``scale x`` its position), like BasicSR's ``extract_subimages.py`` (names ``KEY_s001.png``, the
last row / column flush with the border). ``crop_size=0`` writes whole aligned pairs (``KEY.png``), for test
sets. ``OUT/meta_info.txt`` lists the HR images (``name.png (h,w,c)``, BasicSR's format). With ``lmdb=True``
it also writes ``OUT/HR.lmdb`` and ``OUT/LR.lmdb`` with ``basicsr.utils.lmdb_util`` (keys: the names without
``.png``, as BasicSR's ``create_lmdb.py`` makes them), which BasicSR's ``PairedImageDataset`` reads with
``io_backend: lmdb``.

Patch coverage: the authors crop their ``P = gt_size / scale`` LR training patch anywhere in the whole image;
BasicSR crops it inside a sub-image. The default sub-images (:func:`default_crop`: ``2P`` LR pixels, step
``P + 1``) keep every one of the authors' patch positions reachable (:func:`patch_coverage`; a side shorter
than the crop is taken whole); BasicSR's DIV2K setting (120 / 60 LR pixels) reaches about a fifth of them for a
96-pixel patch. The coverage of a run is printed. (Sampling differs still: BasicSR draws sub-images uniformly,
so large images and the overlaps count more than in the authors' one draw per image and epoch.)

Safe to interrupt, to kill and to re-run: everything is written into a staging folder beside ``OUT``
(``.<OUT>.prepare_tmp_*``) and, when complete, swapped with ``OUT`` in one atomic step (Linux
``renameat2(RENAME_EXCHANGE)``; Ctrl-C and SIGTERM are held back meanwhile), so a run killed at any moment
leaves ``OUT`` as it was or complete. Where the exchange is not available, ``OUT`` is renamed aside and the
staging folder renamed to ``OUT``; a run killed between the two leaves ``OUT`` aside as
``.<OUT>.prepare_old_*``, which the next run puts back first. A re-run removes the leftovers of a killed
run and writes the same files.

It never deletes what it did not write: ``OUT`` may hold only the products of an earlier run
(``HR``/``LR`` with exactly the names in ``meta_info.txt``, the LMDBs) that this run writes again; anything
else (``OUT/HR/my_photo.png``, an ``LR.lmdb`` that a run without ``lmdb`` would not replace) is refused,
naming it, unless ``overwrite=True``.
"""
import contextlib
import ctypes
import errno
import os
import os.path as osp
import re
import shutil
import signal
import stat
import tempfile

import cv2

from d2csr.utils.image_io import UnreadableImage, decode_image

from .pair_align import align_pair, check_lq_at_gt_size, check_pair_sizes
from .pair_index import DataError, count_warning, folder_pairs, layout_pairs, list_pairs

STAGING_TAG, OLD_TAG = '.prepare_tmp_', '.prepare_old_'
PRODUCTS = ('HR', 'LR', 'meta_info.txt')
LMDB_PRODUCTS = ('HR.lmdb', 'LR.lmdb')
LQ_PATCH = 96  # the paper's LR training patch (gt_size = 96 x scale in every training option file)
TEST_WORDS = {'test', 'testing', 'val', 'valid', 'validation', 'eval'}  # folder names that say "test set"
TRAIN_WORDS = {'train', 'training'}


def default_crop(scale, split, gt_size=None):
    """``(crop_size, step)`` in HR pixels: for training sets, sub-images that keep the authors' patch coverage
    for the training patch ``gt_size`` (HR; default ``96 x scale``): LR crops of twice the patch, ``P``, and a
    step of ``P + 1``, so that the ``P``-pixel patches BasicSR cuts inside the sub-images start at every LR
    position of the whole image (:func:`patch_coverage` is 1; 120 / 60 px crops, BasicSR's DIV2K setting, reach
    about a fifth of them). Whole images (0) for test sets."""
    if split != 'train':
        return 0, 0
    patch = (gt_size // scale) if gt_size else LQ_PATCH
    return 2 * patch * scale, (patch + 1) * scale


def full_coverage_step(crop_size, scale, gt_size=None):
    """The largest HR step (a multiple of ``scale``) at which ``crop_size`` sub-images reach every position of
    the ``gt_size`` patch (LR: ``crop - patch + 1``); ``crop_size // 2`` when the patch does not fit a crop."""
    patch = (gt_size // scale) if gt_size else LQ_PATCH
    lq_step = crop_size // scale - patch + 1
    return lq_step * scale if lq_step > 0 else max(scale, crop_size // 2 // scale * scale)


def crop_positions(size, crop, step):
    """Top (or left) coordinates of the crops along one side; the last one is flush with the border."""
    positions = list(range(0, size - crop + 1, step))
    if positions and positions[-1] + crop < size:
        positions.append(size - crop)
    return positions


def _side_crop(size, crop, min_size):
    """The crop length along a side of ``size`` pixels: ``crop``, or the whole side when it is shorter than
    ``crop`` but at least ``min_size`` (``None``: no shorter crops, the image is skipped)."""
    if size >= crop:
        return crop
    return size if min_size is not None and size >= min_size else None


def patch_coverage(size, crop, step, patch, min_size=None):
    """``(reached, total)`` patch positions along one side of ``size`` LR pixels: ``total`` are the positions
    the authors' whole-image cropping draws (``0 .. size - patch - 1``, their ``randint`` bounds), ``reached``
    those of them where a ``patch`` cut inside one of the sub-images (``crop`` long, ``step`` apart, the last
    flush with the border; BasicSR draws ``0 .. crop - patch``) can start. A 2-D image's coverage is the product
    of its two sides'."""
    total = max(0, size - patch)
    side = _side_crop(size, crop, min_size)
    if side is None or side < patch:
        return 0, total
    reachable = set()
    for top in crop_positions(size, side, step):
        reachable.update(range(top, top + side - patch + 1))
    return len(reachable & set(range(total))), total


def sub_image_pairs(img_gt, img_lq, scale, crop_size, step, min_size=None):
    """``[(gt_crop, lq_crop), ...]`` of an aligned pair (``img_gt`` is ``scale x img_lq``); whole pair when
    ``crop_size`` is 0. A side shorter than the LR crop is taken whole when it is at least ``min_size`` LR
    pixels (the training patch), else the pair gives no sub-image (empty list)."""
    if not crop_size:
        return [(img_gt, img_lq)]
    lq_crop, lq_step = crop_size // scale, step // scale
    h, w = img_lq.shape[:2]
    crop_h, crop_w = _side_crop(h, lq_crop, min_size), _side_crop(w, lq_crop, min_size)
    if crop_h is None or crop_w is None:
        return []
    crops = []
    for top in crop_positions(h, crop_h, lq_step):
        for left in crop_positions(w, crop_w, lq_step):
            crops.append((img_gt[top * scale:(top + crop_h) * scale, left * scale:(left + crop_w) * scale],
                          img_lq[top:top + crop_h, left:left + crop_w]))
    return crops


def _words(name):
    return set(re.split(r'[^a-z]+', osp.basename(osp.normpath(str(name))).lower()))


def check_split_folder(out, split, crop_size, layout):
    """Refuse to write a training split, or sub-images, into a folder named for testing (``.../test``,
    ``RealSR_x4/val``): a test would then score training crops without a word; and a test split into a folder
    named for training."""
    words = _words(out)
    if words & TEST_WORDS and (crop_size or (layout != 'pairs' and split == 'train')):
        what = (f'the {split} split as {"sub-images" if crop_size else "whole images"}' if layout != 'pairs'
                else 'sub-images')
        fix = ('pass --split test (whole test images)' if layout != 'pairs' else 'pass --crop-size 0 (whole images)')
        raise DataError(f'--out {out!r} is named for testing, but this run would write {what} into it (--split '
                        f'defaults to train): a test reading it would score training crops. For the test set, '
                        f'{fix}; for training data, choose an --out named for it (e.g. train_sub). Nothing was '
                        'written.')
    if words & TRAIN_WORDS and layout != 'pairs' and split == 'test':
        raise DataError(f'--out {out!r} is named for training, but --split test writes the test images into it. '
                        'Choose an --out named for the test set (e.g. .../test), or pass --split train. Nothing '
                        'was written.')


def _write_png(path, img, compression_level):
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, compression_level]):
        raise OSError(f'could not write {path}')


def _folder_bytes(path):
    if osp.isfile(path):
        return osp.getsize(path)
    return sum(osp.getsize(osp.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _human(n):
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1024 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024


@contextlib.contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM back while the finished output is swapped into place; yields a list that is
    non-empty when one arrived meanwhile (the run is complete by then, and then exits as asked)."""
    caught = []
    held = [sig for sig in (signal.SIGINT, getattr(signal, 'SIGTERM', None)) if sig is not None]
    previous = {}
    try:
        for sig in held:
            previous[sig] = signal.signal(sig, lambda *args: caught.append(args[0]))
    except ValueError:  # not the main thread
        yield caught
        return
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exchange(a, b):
    """Atomically swap the directory entries ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``); returns
    False where that is not available (other systems, old kernels, file systems without it)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), a)


def _sibling(out, tag):
    parent, base = osp.split(osp.abspath(out))
    return parent, f'.{base}{tag}'


def _swap_into_place(staging, out):
    """Make the complete ``staging`` folder ``out`` in one atomic step; returns the folder holding the
    previous ``out`` (to delete) or ``None``."""
    if not osp.lexists(out):
        os.rename(staging, out)
        return None
    if _exchange(staging, out):
        return staging
    parent, prefix = _sibling(out, OLD_TAG)
    old = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.rmdir(old)
    os.rename(out, old)  # killed right here: the next run renames `old` back to `out`
    os.rename(staging, out)
    return old


def _recover(out, log):
    """Put back an ``out`` that a killed run left aside, and remove the leftovers of killed runs."""
    parent, tmp_prefix = _sibling(out, STAGING_TAG)
    old_prefix = _sibling(out, OLD_TAG)[1]
    if not osp.isdir(parent):
        return
    names = sorted(os.listdir(parent))
    olds = [n for n in names if n.startswith(old_prefix)]
    if olds and not osp.lexists(out):
        os.rename(osp.join(parent, olds[-1]), out)
        log(f'Put back {out} from {olds[-1]}, where a killed run had left it.')
        olds = olds[:-1]
    stale = [n for n in names if n.startswith(tmp_prefix)] + olds
    for name in stale:
        shutil.rmtree(osp.join(parent, name), ignore_errors=True)
    if stale:
        log(f'Removed the leftovers of an interrupted run: {", ".join(stale)}')


def _foreign_entries(out, products):
    """What in ``out`` this run would delete without having written it: anything but the products of an
    earlier run that this run writes again (``HR``/``LR`` holding exactly the names in ``meta_info.txt``,
    LMDB folders holding BasicSR's three files)."""
    if not osp.isdir(out):
        return [out] if osp.lexists(out) else []
    foreign = []
    listed = None
    meta = osp.join(out, 'meta_info.txt')
    if osp.isfile(meta):
        with open(meta, encoding='utf-8', errors='replace') as f:
            listed = {line.split(' (')[0] for line in f if line.strip()}
    for name in sorted(os.listdir(out)):
        path = osp.join(out, name)
        if name not in products:
            foreign.append(path)
        elif name in ('HR', 'LR'):
            if not osp.isdir(path):
                foreign.append(path)
                continue
            extra = sorted(set(os.listdir(path)) - (listed or set()))
            foreign += [osp.join(path, n) for n in extra]
        elif name in LMDB_PRODUCTS:
            if not osp.isdir(path):
                foreign.append(path)
                continue
            foreign += [osp.join(path, n) for n in sorted(os.listdir(path))
                        if n not in ('data.mdb', 'lock.mdb', 'meta_info.txt')]
        elif name == 'meta_info.txt' and not osp.isfile(path):
            foreign.append(path)
    return foreign


@contextlib.contextmanager
def _exclusive(out):
    """One prepare run per output folder at a time (a second one would remove the first one's staging)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    parent, name = _sibling(out, '.prepare.lock')
    with open(osp.join(parent, name), 'w') as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataError(f'another prepare_dataset run is writing {out!r}; wait for it to finish.') from None
        try:
            yield
        finally:
            os.unlink(lock.name)


def _check_out(out, pairs):
    target = osp.realpath(out)
    sources = {osp.realpath(osp.dirname(p[k])) for p in pairs for k in ('gt_path', 'lq_path')}
    for source in sorted(sources):
        if source == target or source.startswith(target + os.sep):
            raise DataError(f'--out {out!r} would replace the input folder {source!r}; choose another --out.')


def check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DataError(f'--scale must be a positive integer (2, 3, 4 or 8: HR = scale x LR), got {scale!r}.')
    return scale


def _resolve_out(out):
    """Where the output is written: ``out``, or, when ``out`` is a symbolic link, the folder it points to (the
    link is kept and written through; the swap happens beside its target)."""
    return osp.realpath(out) if osp.islink(out) else out


def _folder_mode(target):
    """The permissions the output folder gets: those of the folder it replaces, else a new folder's (``0777``
    less the umask), not ``mkdtemp``'s ``0700``."""
    if osp.isdir(target):
        return stat.S_IMODE(os.stat(target).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def prepare_pairs(pairs, scale, out, crop_size=0, step=0, lmdb=False, compression_level=3, lq_at_gt_size=None,
                  description='pairs', log=print, overwrite=False, gt_size=None):
    """Write the sub-images (and LMDBs) of ``pairs`` into ``out``; return a summary dict.

    ``gt_size`` (HR, default ``96 x scale``): the training patch the sub-images are for; a side shorter than the
    crop is taken whole when it holds a patch, and the summary's ``coverage`` is ``(reached, total)``: the
    patch positions of whole-image cropping that a patch cut inside the sub-images can start at
    (:func:`patch_coverage`, summed over the images), logged with a warning when it is below 100 %.

    ``out`` may be a symbolic link to a folder: it stays a link and the folder it points to is written; the
    output folder keeps the permissions of the one it replaces.

    Raises :class:`DataError` (before anything in ``out`` changes) for bad sizes, unreadable files or bad
    crop settings, listing every problem at once; also when ``out`` holds files this run would delete without
    having written them (unless ``overwrite``).
    """
    scale = check_scale(scale)
    gt_size = gt_size or LQ_PATCH * scale
    if isinstance(gt_size, bool) or not isinstance(gt_size, int) or gt_size <= 0 or gt_size % scale:
        raise DataError(f'--gt-size must be a positive multiple of --scale ({scale}), the HR training patch; got '
                        f'{gt_size!r}.')
    check_lq_at_gt_size(lq_at_gt_size, '--lq-at-gt-size')
    if crop_size:
        if crop_size < 0 or crop_size % scale or step <= 0 or step % scale:
            raise DataError(f'--crop-size ({crop_size}) and --step ({step}) must be positive multiples of --scale '
                            f'({scale}); they are HR pixels (LR: divided by the scale).')
    if lmdb:
        bad = [p['key'] for p in pairs if not p['key'].isascii()]
        if bad:
            raise DataError(f'LMDB keys must be ASCII; rename: {", ".join(bad)}.')
        dotted = [p['key'] for p in pairs if '.' in p['key']]
        if dotted:
            raise DataError(f'--lmdb: {len(dotted)} name(s) contain a dot ({", ".join(dotted[:10])}); BasicSR\'s '
                            'PairedImageDataset cuts LMDB keys at the first dot of each meta_info line, so these '
                            'would collapse (e.g. "astro.v1_s001" -> "astro"). Rename them without dots, or drop '
                            '--lmdb (the HR/LR folders read fine).')
    option = '--lq-at-gt-size bicubic'
    groups = check_pair_sizes(pairs, scale, lq_at_gt_size, where=description, option=option)
    _check_out(out, pairs)
    products = PRODUCTS + (LMDB_PRODUCTS if lmdb else ())
    target = _resolve_out(out)  # a symbolic link to a folder is written through, not replaced
    os.makedirs(osp.dirname(osp.abspath(target)), exist_ok=True)

    with _exclusive(target):
        _recover(target, log)
        foreign = _foreign_entries(target, products)
        if foreign and not overwrite:
            raise DataError(f'--out {out!r} holds {len(foreign)} thing(s) this run did not write and would delete: '
                            + ', '.join(foreign[:10]) + (' ...' if len(foreign) > 10 else '')
                            + '. Choose another --out, move them away, or pass --overwrite to replace all of '
                            f'{out!r}. Nothing was changed.')
        parent, prefix = _sibling(target, STAGING_TAG)
        staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
        os.chmod(staging, _folder_mode(target))
        old = None
        try:
            summary = _write_all(pairs, scale, staging, crop_size, step, compression_level, lq_at_gt_size,
                                 description, log, out, gt_size // scale)
            summary.update(cropped_gt=len(groups['crop_gt']), lq_downsampled=len(groups['lq_at_gt_size']))
            raw_bytes = summary.pop('raw_bytes')
            if lmdb:
                _make_lmdbs(staging, summary['names'], raw_bytes, log)
            _fsync_tree(staging)
            with _signals_held() as ctrl_c:
                old = _swap_into_place(staging, target)
        finally:
            for folder in (staging, old):
                if folder is not None and osp.lexists(folder):
                    shutil.rmtree(folder, ignore_errors=True)

    if ctrl_c:
        log('Ctrl-C / SIGTERM arrived while the finished outputs were moved into place; they are complete.')
    summary.update(out=out, bytes={name: _folder_bytes(osp.join(out, name)) for name in products})
    sizes = ', '.join(f'{name} {_human(n)}' for name, n in summary['bytes'].items())
    total = sum(summary['bytes'].values())
    what = 'whole pairs' if not crop_size else f'sub-image pairs (HR {crop_size}px step {step}, ' \
                                               f'LR {crop_size // scale}px step {step // scale})'
    log(f'Done: {summary["pairs"]} pairs -> {summary["sub_images"]} {what} in {out}')
    log(f'  {sizes}; {total:,} bytes in all')
    if summary['cropped_gt']:
        log(f'  HR cropped to {scale} x LR: {summary["cropped_gt"]} pair(s)')
    if summary['lq_downsampled']:
        log(f'  LR at HR size, downsampled by {scale} ({lq_at_gt_size}): {summary["lq_downsampled"]} pair(s)')
    if summary['skipped']:
        log(f'  skipped (LR smaller than the {gt_size // scale}px training patch): {", ".join(summary["skipped"])}')
    if crop_size:
        reached, total = summary['coverage']
        share = 100.0 * reached / total if total else 100.0
        line = (f'  patch coverage: a {gt_size // scale}px LR patch (gt_size {gt_size}) cut inside these sub-images '
                f'can start at {share:.1f}% of the positions whole-image cropping draws from')
        if reached < total:
            best = full_coverage_step(crop_size, scale, gt_size)
            log(f'warning: {line.strip()}; the rest of each image is seen only at other offsets. '
                + (f'--step {best} (or the default crop and step) reaches all of them.' if
                   crop_size // scale >= gt_size // scale else
                   f'The crop is smaller than the patch: use --crop-size >= {gt_size} (or the defaults).'))
        else:
            log(line + ' (all of them)')
    return summary


def _fsync_tree(folder):
    """Flush the staged files to disk before the swap, so that a crash right after it finds them complete."""
    if os.name == 'nt':
        return
    for directory, _, files in os.walk(folder):
        for name in files:
            fd = os.open(osp.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_all(pairs, scale, staging, crop_size, step, compression_level, lq_at_gt_size, description, log, out,
               patch):
    hr_dir, lq_dir = osp.join(staging, 'HR'), osp.join(staging, 'LR')
    os.makedirs(hr_dir)
    os.makedirs(lq_dir)
    log(f'Preparing {description}: {len(pairs)} pairs -> {out}')
    names, meta, skipped, unreadable = [], [], [], []
    raw_bytes = {'HR': 0, 'LR': 0}
    coverage = [0, 0]
    for i, pair in enumerate(pairs, 1):
        images, bad = {}, []
        for k in ('gt_path', 'lq_path'):
            try:
                images[k] = decode_image(pair[k], cv2.IMREAD_COLOR, strict=True)
            except UnreadableImage as err:
                bad.append(f'{pair[k]} ({err})')
        if bad:
            unreadable += bad
            log(f'[{i}/{len(pairs)}] {pair["key"]}: cannot read {", ".join(bad)}')
            continue
        img_gt, img_lq = images['gt_path'], images['lq_path']
        img_gt, img_lq, _ = align_pair(img_gt, img_lq, scale, lq_at_gt_size, pair['gt_path'], pair['lq_path'],
                                       option='--lq-at-gt-size bicubic')
        crops = sub_image_pairs(img_gt, img_lq, scale, crop_size, step, min_size=patch)
        if not crops:
            skipped.append(pair['key'])
        if crop_size:
            (reach_h, total_h), (reach_w, total_w) = (
                patch_coverage(n, crop_size // scale, step // scale, patch, min_size=patch) for n in img_lq.shape[:2])
            coverage[0] += reach_h * reach_w
            coverage[1] += total_h * total_w
        for index, (gt, lq) in enumerate(crops, 1):
            name = f'{pair["key"]}.png' if not crop_size else f'{pair["key"]}_s{index:03d}.png'
            _write_png(osp.join(hr_dir, name), gt, compression_level)
            _write_png(osp.join(lq_dir, name), lq, compression_level)
            names.append(name)
            raw_bytes['HR'] += gt.nbytes
            raw_bytes['LR'] += lq.nbytes
            meta.append(f'{name} ({gt.shape[0]},{gt.shape[1]},{gt.shape[2]})')
        log(f'[{i}/{len(pairs)}] {pair["key"]}: {len(crops)} sub-image pair(s)')
    if unreadable:
        raise DataError(f'{description}: {len(unreadable)} file(s) cannot be decoded (corrupt or not images), all '
                        'listed:\n  ' + '\n  '.join(unreadable) + f'\nReplace or remove them; {out!r} is unchanged.')
    if not names:
        raise DataError(f'{description}: no sub-images written (every LR is smaller than the {patch}px training '
                        'patch, or than the crop); lower --gt-size (the HR patch, as the training options\' '
                        'gt_size) or --crop-size.')
    with open(osp.join(staging, 'meta_info.txt'), 'w') as f:
        f.write(''.join(line + '\n' for line in meta))
    return dict(pairs=len(pairs), sub_images=len(names), skipped=skipped, names=names, raw_bytes=raw_bytes,
                coverage=tuple(coverage))


def _make_lmdbs(staging, names, raw_bytes, log):
    """``HR.lmdb`` / ``LR.lmdb`` from the written folders with BasicSR's ``LmdbMaker`` and ``read_img_worker``:
    keys are the names without ``.png``, values PNG bytes (compression 1), ``meta_info.txt`` lines
    ``name.png (h,w,c) 1``, as ``make_lmdb_from_imgs`` / BasicSR's ``create_lmdb.py`` write them."""
    from basicsr.utils.lmdb_util import LmdbMaker, read_img_worker

    for side in ('HR', 'LR'):
        # map_size is an upper bound (address space, not disk): PNG at level 1 stays below ~1.1 x raw pixels
        maker = LmdbMaker(osp.join(staging, f'{side}.lmdb'), map_size=int(raw_bytes[side] * 1.5) + (64 << 20),
                          compress_level=1)
        for i, name in enumerate(names, 1):
            key, img_bytes, shape = read_img_worker(osp.join(staging, side, name), osp.splitext(name)[0], 1)
            maker.put(img_bytes, key, shape)
            if i % 1000 == 0:
                log(f'  {side}.lmdb: {i}/{len(names)}')
        maker.close()
        log(f'  {side}.lmdb: {len(names)} images')


def prepare(layout, root, scale, out, split='train', crop_size=None, step=None, lmdb=False, compression_level=3,
            lq_at_gt_size=None, log=print, overwrite=False, gt_size=None, **layout_opt):
    """Find the pairs of ``layout`` under ``root`` and :func:`prepare_pairs` them.

    ``layout``: ``realsr``, ``drealsr``, ``d2crealsr`` (``layout_opt``: ``cameras`` for RealSR) or ``pairs``
    (``layout_opt``: ``gt_dir`` / ``lq_dir`` under ``root`` (default ``HR`` / ``LR``), ``filename_tmpl``,
    ``gt_filename_tmpl``, ``lq_regex``, ``gt_regex``; or ``list_file``, relative paths taken from ``root``).
    ``crop_size`` / ``step`` default to :func:`default_crop` for the training patch ``gt_size`` (HR, default
    ``96 x scale``); a ``crop_size`` without ``step`` gets :func:`full_coverage_step`. A training split (or
    sub-images) into a folder named for testing is refused (:func:`check_split_folder`); a data set whose
    number of pairs differs from the published one is reported with a warning.
    """
    scale = check_scale(scale)
    crop_size = default_crop(scale, split, gt_size)[0] if crop_size is None else crop_size
    step = (full_coverage_step(crop_size, scale, gt_size) if crop_size else 0) if step is None else step
    check_split_folder(out, split, crop_size, layout)
    if layout == 'pairs':
        list_file = layout_opt.pop('list_file', None)
        if list_file:
            pairs = list_pairs(list_file, root)
        else:
            if not root or not osp.isdir(root):
                raise DataError(f'--root {root!r} does not exist (it should hold the HR and LR folders).')
            gt_dir = osp.join(root, layout_opt.pop('gt_dir', None) or 'HR')
            lq_dir = osp.join(root, layout_opt.pop('lq_dir', None) or 'LR')
            pairs = folder_pairs(gt_dir, lq_dir, **layout_opt)
        description = f'pairs x{scale}'
    else:
        pairs = layout_pairs(layout, root, scale, split, **layout_opt)
        description = f'{layout} x{scale} {split}'
        warning = count_warning(layout, split, scale, len(pairs), layout_opt.get('cameras'))
        if warning:
            log(f'warning: {warning}')
        swapped = sum(1 for p in pairs if p.get('swapped'))
        if swapped:
            log(f'{swapped} pair(s) whose file in the LR folder is the larger one: taken with it as HR.')
    return prepare_pairs(pairs, scale, out, crop_size, step, lmdb, compression_level, lq_at_gt_size, description, log,
                         overwrite=overwrite, gt_size=gt_size)
