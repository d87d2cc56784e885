"""Convert the authors' MegEngine D2C-SR checkpoint into a BasicSR checkpoint (no MegEngine needed).

    python scripts/convert_official.py D2C-SR_x4.pkl experiments/pretrained_models/D2C_official_x4.pth

Writes ``{'params': state_dict, 'd2csr': {'channel_order': 'RGB', ...}}`` (``params`` is what
``path: pretrain_network_g`` loads) and prints the ``network_g`` options that load it (scale, width and blocks
are read off the checkpoint).

The authors' network works in BGR (their code reads images with ``cv2.imread`` and never converts them); d2csr
and BasicSR feed RGB. The converter swaps red and blue at the network's ends (exactly, see
``d2csr.convert.swap_red_blue``) so that the converted network on RGB gives what theirs gives on BGR, and
records the order in the checkpoint. A ``.pth`` written by an older version of this script (BGR, no record) is
refused by every loader; give it here as INPUT to convert it again.

The pickle is read as data only: a file that asks for anything but containers and numpy arrays is refused and
nothing in it runs. OUTPUT appears whole or not at all (a full disk or a file-size limit leaves no partial file).
"""
import argparse
import errno
import os
import os.path as osp
import sys

# yaml, torch and d2csr are imported in main(), after the arguments: --help answers at once

WRITE_ERRORS = {errno.ENOSPC: 'the disk is full', errno.EDQUOT: 'the disk quota is exhausted',
                errno.EFBIG: 'the file-size limit (ulimit -f) is smaller than the checkpoint',
                errno.EACCES: 'permission denied', errno.EPERM: 'permission denied',
                errno.EROFS: 'the file system is read-only'}


def check_output(output, force):
    """A message saying why ``output`` cannot be written, or ``None``; nothing is created."""
    if osp.isdir(output):
        return (f'{output} is a folder; give the file to write, e.g. '
                f'{osp.join(output, "D2C_official_x4.pth")}')
    if osp.lexists(output) and not force:
        return f'{output} exists; pass --force to overwrite it'
    folder = osp.dirname(osp.abspath(output))
    existing = folder
    while not osp.isdir(existing):  # the nearest folder that exists (the rest is created)
        if osp.lexists(existing):
            return f'cannot write {output}: {existing} is a file, not a folder'
        existing = osp.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return f'cannot write {output}: the folder {existing} is not writable; choose another output path'
    return None


def write_error(output, err):
    reason = WRITE_ERRORS.get(err.errno, err.strerror or str(err))
    return f'could not write {output}: {reason}. Nothing was written there; free space or choose another path.'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', help='the authors\' checkpoint (pickle with state_dict_D / state_dict_C), or a '
                        '.pth an older version of this script wrote')
    parser.add_argument('output', help='BasicSR checkpoint to write (.pth)')
    parser.add_argument('-s', '--scale', type=int, default=None, help='expected scale (checked)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing output file')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    problem = check_output(args.output, args.force)
    if problem:
        sys.exit(f'error: {problem}')

    import yaml

    from d2csr.convert import (CHANNEL_ORDER, SOURCE_OFFICIAL, UnsafeCheckpointError, load_official,
                               reconvert_legacy, save_basicsr_checkpoint)
    from d2csr.utils.checkpoint import CheckpointFormatError, is_zip_checkpoint

    try:
        legacy = False
        if osp.isfile(args.input):
            with open(args.input, 'rb') as f:
                legacy = is_zip_checkpoint(f.read(4))
        net = reconvert_legacy(args.input) if legacy else load_official(args.input, scale=args.scale)
        if legacy and args.scale is not None and args.scale != net.upscale:
            raise ValueError(f'{args.input} is an x{net.upscale} model, but scale {args.scale} was asked for')
    except (CheckpointFormatError, UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    except OSError as err:  # unreadable input (permissions, I/O error)
        sys.exit(f'error: cannot read {args.input}: {err.strerror or err}')
    try:
        os.makedirs(osp.dirname(osp.abspath(args.output)), exist_ok=True)
        save_basicsr_checkpoint(net, args.output, source=SOURCE_OFFICIAL)
    except OSError as err:
        sys.exit(f'error: {write_error(args.output, err)}')
    num = sum(p.numel() for p in net.parameters())
    what = 'an older conversion (BGR)' if legacy else 'the authors\' checkpoint'
    print(f'wrote {args.output}: x{net.upscale} D2CSR, {num:,d} parameters, from {what}')
    print(f'channel order: {CHANNEL_ORDER}. The authors\' network works on BGR images (cv2.imread); sub_mean\'s '
          'inputs, add_mean\'s outputs and the convergence net\'s first conv were permuted so that it takes and '
          'gives RGB, as d2csr and BasicSR feed it (exact: same outputs with red and blue swapped). Recorded as '
          'd2csr: channel_order in the checkpoint.')
    print('network_g options that load it (path: pretrain_network_g: ' + args.output + '):\n')
    print(yaml.safe_dump({'network_g': dict(net.network_options, img_range=1.0)}, sort_keys=False))
    return 0


if __name__ == '__main__':
    sys.exit(main())
