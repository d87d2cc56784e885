"""Convert the authors' MegEngine D2C-SR checkpoint into a BasicSR checkpoint (no MegEngine needed).

    python scripts/convert_official.py D2C-SR_x4.pkl experiments/pretrained_models/D2C_official_x4.pth

Writes ``{'params': state_dict}`` (what ``path: pretrain_network_g`` loads) and prints the ``network_g``
options that load it (scale, width and blocks are read off the checkpoint). The pickle is read as data
only: a file that asks for anything but containers and numpy arrays is refused and nothing in it runs.
"""
import argparse
import os
import os.path as osp
import sys

import yaml

import d2csr  # noqa: F401  (compatibility shims and registries)
from d2csr.convert import UnsafeCheckpointError, load_official, save_basicsr_checkpoint
from d2csr.utils.checkpoint import CheckpointFormatError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', help='the authors\' checkpoint (pickle with state_dict_D / state_dict_C)')
    parser.add_argument('output', help='BasicSR checkpoint to write (.pth)')
    parser.add_argument('-s', '--scale', type=int, default=None, help='expected scale (checked)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing output file')
    args = parser.parse_args(argv)

    if osp.exists(args.output) and not args.force:
        sys.exit(f'error: {args.output} exists; pass --force to overwrite it')
    try:
        net = load_official(args.input, scale=args.scale)
    except (CheckpointFormatError, UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    os.makedirs(osp.dirname(osp.abspath(args.output)), exist_ok=True)
    save_basicsr_checkpoint(net, args.output)
    num = sum(p.numel() for p in net.parameters())
    print(f'wrote {args.output}: x{net.upscale} D2CSR, {num:,d} parameters')
    print('network_g options that load it (path: pretrain_network_g: ' + args.output + '):\n')
    print(yaml.safe_dump({'network_g': dict(net.network_options, img_range=1.0)}, sort_keys=False))
    return 0


if __name__ == '__main__':
    sys.exit(main())
