"""Parameter counts of the D2C structure around other backbones (paper Table 3) against the originals.

For every backbone, builds the original network from ``options/train_<Backbone>_x4.yml`` and the D2C
version from ``options/train_D2C-<Backbone>_div_x4.yml`` (the shipped option files, so the table is what
users train), counts their parameters and prints them beside the paper's figures (RealSR x4 PSNR is in the
paper's table too; it needs the RealSR data and full trainings, so it is not measured here).

Usage::

    python benchmarks/table3_params.py            # x4, markdown table
    python benchmarks/table3_params.py --scale 8  # the same files, built at x2, x3 or x8

Networks are built on PyTorch's ``meta`` device (shapes only), so this takes about a second on a CPU.
D2C counts include the convergence net (46,080 parameters for 4 leaves); the tree alone is shown too.
"""
import argparse
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, ROOT)
# torch, BasicSR and d2csr are imported where they are used, after the arguments: --help answers at once

# paper Table 3 (RealSR x4): backbone -> (original params, D2C params, original PSNR, D2C PSNR)
PAPER = {
    'SRResNet': (1.52e6, 1.37e6, 28.99, 29.19),
    'VDSR': (0.67e6, 0.67e6, 27.07, 28.21),
    'RRDBNet': (16.7e6, 9.16e6, 28.34, 28.47),
    'RDN': (6.02e6, 5.59e6, 29.23, 29.32),
    'EDSR': (43.1e6, 7.91e6, 29.09, 29.41),
    'IMDN': (0.874e6, 0.738e6, 29.17, 29.45),
}


def network_options(path, scale):
    """``network_g`` of an options file, set to ``scale`` (RRDBNet calls the key ``scale``)."""
    from d2csr.utils.yaml_io import load_options

    opt = load_options(path)['network_g']  # options files are data: d2csr's safe loader
    opt['scale' if opt['type'] == 'RRDBNet' else 'upscale'] = scale
    return opt


def count(net, prefix_excluded=None):
    return sum(p.numel() for name, p in net.named_parameters()
               if prefix_excluded is None or not name.startswith(prefix_excluded))


SCALES = (2, 3, 4, 8)  # D2CSR's scales
# BasicSR's RRDBNet builds an x4 network for any other scale without complaint; it has only these
ORIGINAL_SCALES = {'RRDBNet': (1, 2, 4)}


def build_original(opt, scale):
    """The original network at ``scale``, or ``None`` where it has no such scale (MSRResNet x8, RDN x8, ...)."""
    if scale not in ORIGINAL_SCALES.get(opt['type'], SCALES):
        return None
    from basicsr.archs import build_network

    try:
        return build_network(opt)
    except (ValueError, AttributeError, KeyError, AssertionError):  # what the originals raise for a scale
        return None


def table_rows(scale=4):
    """One dict per backbone; ``original`` is ``None`` where BasicSR's original has no x``scale``."""
    if scale not in SCALES:
        raise ValueError(f'scale must be one of {SCALES}, got {scale!r}')
    import torch

    import d2csr  # noqa: F401  (registers D2CSR, RDN, IMDN, VDSR; BasicSR registers EDSR, MSRResNet, RRDBNet)
    from basicsr.archs import build_network

    rows = []
    for backbone, (paper_orig, paper_d2c, psnr_orig, psnr_d2c) in PAPER.items():
        orig_opt = network_options(osp.join(ROOT, 'options', f'train_{backbone}_x4.yml'), scale)
        d2c_opt = network_options(osp.join(ROOT, 'options', f'train_D2C-{backbone}_div_x4.yml'), scale)
        with torch.device('meta'):
            d2c = build_network(d2c_opt)
            orig = build_original(orig_opt, scale)
        rows.append(dict(backbone=backbone, original_type=orig_opt['type'],
                         original=None if orig is None else count(orig),
                         d2c=count(d2c), d2c_tree=count(d2c, 'fusion.'), d2c_backbone=d2c_opt['backbone'],
                         paper_original=paper_orig, paper_d2c=paper_d2c, psnr_original=psnr_orig,
                         psnr_d2c=psnr_d2c))
    return rows


def format_table(rows, scale):
    """The markdown table; the column headers name the scale the networks were built at."""
    lines = [f'| backbone | original, x{scale} | D2C, x{scale} (tree + convergence) | D2C / original '
             '| paper original (x4) | paper D2C (x4) | paper PSNR original -> D2C (RealSR x4) |',
             '| --- | ---: | ---: | ---: | ---: | ---: | --- |']
    for r in rows:
        original = f"{r['original']:,}" if r['original'] is not None else f'n/a (no x{scale} {r["original_type"]})'
        ratio = f"{r['d2c'] / r['original']:.2f}" if r['original'] is not None else 'n/a'
        lines.append(f"| {r['backbone']} (`{r['original_type']}` / `backbone: {r['d2c_backbone']}`) "
                     f"| {original} | {r['d2c']:,} ({r['d2c_tree']:,} + {r['d2c'] - r['d2c_tree']:,}) "
                     f"| {ratio} | {millions(r['paper_original'])} | {millions(r['paper_d2c'])} "
                     f"| {r['psnr_original']:.2f} -> {r['psnr_d2c']:.2f} |")
    return '\n'.join(lines)


def millions(n):
    return f'{n / 1e6:.3g}M'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scale', type=int, default=4, choices=SCALES, help='build the networks at this scale')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rows = table_rows(args.scale)
    print(f'Parameters of the networks built at x{args.scale} from this repository\'s option files, beside '
          'paper Table 3 (RealSR x4)\n')
    print(format_table(rows, args.scale))
    missing = [r['original_type'] for r in rows if r['original'] is None]
    if missing:
        print(f'\nNo x{args.scale} {" / ".join(missing)} exists: no original to compare with.')
    bigger = [r['backbone'] for r in rows if r['original'] is not None and r['d2c'] >= r['original']]
    print('\nD2C version smaller than the original for every backbone compared' if not bigger else
          f'\nWARNING: D2C version not smaller for {bigger}')


if __name__ == '__main__':
    main()
