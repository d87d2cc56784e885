#!/usr/bin/env python
r"""Prepare real-world SR data the BasicSR way: aligned sub-image pairs in OUT/HR + OUT/LR, optionally LMDBs.

The option files in options/ read the data sets as downloaded (datasets/README.md); this script makes the
optional prepared copies (faster loading, LMDB). Examples::

    # RealSR x4 training set -> sub-images for a 96 px LR training patch (gt_size 384) + LMDBs
    python scripts/prepare_dataset.py realsr --root datasets/RealSR_V3 --scale 4 \
        --out datasets/RealSR_x4/train_sub --lmdb
    # RealSR x4 test set -> whole aligned pairs (a test split is never cropped unless --crop-size is given)
    python scripts/prepare_dataset.py realsr --root datasets/RealSR_V3 --scale 4 --split test \
        --out datasets/RealSR_x4/test
    # DRealSR x4 test set
    python scripts/prepare_dataset.py drealsr --root datasets/DRealSR --scale 4 --split test \
        --out datasets/DRealSR_x4/test
    # D2CRealSR (x8)
    python scripts/prepare_dataset.py d2crealsr --root datasets/D2CRealSR --scale 8 \
        --out datasets/D2CRealSR_x8/train_sub
    # your own camera pairs: ROOT/HR/IMG_0001.png with ROOT/LR/IMG_0001_lr.png
    python scripts/prepare_dataset.py pairs --root my_pairs --scale 4 --filename-tmpl '{}_lr' --out my_pairs_sub
    # the authors' text list ("lr_path hr_path" per line)
    python scripts/prepare_dataset.py pairs --list RealSRTrain.txt --scale 4 --out datasets/RealSR_x4/train_sub

Sub-images keep the authors' patch coverage: for the training patch --gt-size (HR, default 96 x scale, as the
option files' gt_size) the LR crops are twice the patch and the step is the patch + 1, so a patch cut inside the
sub-images can start at every position a patch cut from the whole image can (printed as "patch coverage"; the
120/60 px crops BasicSR uses for DIV2K reach about a fifth of them). --split train (the default) into a folder
named for testing (.../test, .../val) is refused: a test would score training crops.

Train on the result with BasicSR's PairedImageDataset: ``dataroot_gt: OUT/HR``, ``dataroot_lq: OUT/LR``
(``io_backend: disk``), or ``OUT/HR.lmdb`` / ``OUT/LR.lmdb`` with ``io_backend: {type: lmdb}``.
Interrupting or killing it leaves OUT as it was (it is swapped in whole when complete); re-running it writes the
same files. It refuses to delete files in OUT that it did not write, unless --overwrite. OUT may be a symbolic
link to a folder (the link is kept; the folder it points to is written, keeping its permissions).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))
# torch and d2csr are imported in main(), after the arguments: --help answers at once


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    parser.add_argument('layout', choices=['realsr', 'drealsr', 'd2crealsr', 'pairs'],
                        help='the layout of --root: RealSR, DRealSR, D2CRealSR as downloaded, or a folder pair')
    parser.add_argument('--root', help='the data set as downloaded (pairs: the folder holding HR/ and LR/)')
    parser.add_argument('--scale', type=int, required=True, help='2, 3, 4 (RealSR, DRealSR) or 8 (D2CRealSR)')
    parser.add_argument('--out', required=True, help='output folder (gets HR/, LR/, meta_info.txt[, *.lmdb])')
    parser.add_argument('--split', default='train', choices=['train', 'test'],
                        help='default: train (refused into a folder named for testing)')
    parser.add_argument('--gt-size', type=int, default=None,
                        help='HR training patch the sub-images are for, as the options\' gt_size (default: 96 x scale)')
    parser.add_argument('--crop-size', type=int, default=None,
                        help='HR sub-image size, a multiple of the scale; 0 = whole pairs '
                        '(default: 2 x gt-size for train, 0 for test)')
    parser.add_argument('--step', type=int, default=None,
                        help='HR step between sub-images (default: crop - gt-size + scale, every patch position '
                        'reachable)')
    parser.add_argument('--lmdb', action='store_true', help='also write OUT/HR.lmdb and OUT/LR.lmdb')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT even when it holds files an earlier run did not write (they are deleted)')
    parser.add_argument('--compression-level', type=int, default=3, help='PNG compression (BasicSR: 3)')
    parser.add_argument('--lq-at-gt-size', choices=['bicubic'], default=None,
                        help='LR stored at HR size (RealSR before V3): downsample it by the scale')
    parser.add_argument('--cameras', nargs='+', default=None, help='realsr: cameras to take (default: all present)')
    group = parser.add_argument_group('pairs')
    group.add_argument('--gt-dir', default='HR', help='HR folder under --root (default HR)')
    group.add_argument('--lq-dir', default='LR', help='LR folder under --root (default LR)')
    group.add_argument('--filename-tmpl', default='{}', help="LR name from the shared part, e.g. '{}_LR4'")
    group.add_argument('--gt-filename-tmpl', default='{}', help="HR name from the shared part, e.g. '{}_HR'")
    group.add_argument('--lq-regex', default=None, help="LR names, e.g. '(.+)_LR4' (equal groups pair files)")
    group.add_argument('--gt-regex', default=None, help="HR names, e.g. '(.+)_HR'")
    group.add_argument('--list', dest='list_file', default=None,
                       help="a text list, one 'lr_path hr_path' per line (relative paths: from --root)")
    args = parser.parse_args(argv)
    if args.layout != 'pairs' and args.root is None:
        parser.error(f'{args.layout} needs --root (the data set folder as downloaded)')
    if args.layout == 'pairs' and args.root is None and args.list_file is None:
        parser.error('pairs needs --root (with HR/ and LR/) or --list')
    return args


def main(argv=None):
    args = parse_args(argv)
    from d2csr.data.pair_index import DataError
    from d2csr.data.prepare import prepare

    kwargs = {}
    if args.layout == 'realsr' and args.cameras:
        kwargs['cameras'] = args.cameras
    if args.layout == 'pairs':
        kwargs = dict(gt_dir=args.gt_dir, lq_dir=args.lq_dir, filename_tmpl=args.filename_tmpl,
                      gt_filename_tmpl=args.gt_filename_tmpl, lq_regex=args.lq_regex, gt_regex=args.gt_regex,
                      list_file=args.list_file)
    try:
        prepare(args.layout, args.root, args.scale, args.out, split=args.split, crop_size=args.crop_size,
                step=args.step, lmdb=args.lmdb, compression_level=args.compression_level,
                lq_at_gt_size=args.lq_at_gt_size, log=lambda msg: print(msg, flush=True), overwrite=args.overwrite,
                gt_size=args.gt_size, **kwargs)
    except DataError as err:
        sys.exit(f'error: {err}')
    except KeyboardInterrupt:
        sys.exit(f'interrupted: nothing in {args.out} was changed (re-run to prepare it).')


if __name__ == '__main__':
    main()
