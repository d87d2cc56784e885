#!/usr/bin/env python
"""fp16 and bf16 through spandrel: the measurement behind D2C-SR's ``supports_half`` / ``supports_bfloat16``.

For each D2C network of the repository's options files (``options/train_D2C*_div_x4.yml`` whose upsampler spandrel
can load, random weights) or a given checkpoint (``--model``), the weights are saved, loaded through spandrel
after :func:`d2csr.integrations.spandrel.install` (as ComfyUI / chaiNNer do) and run on a real photograph
(a crop of scikit-image's astronaut) in fp32, then after ``model.half()`` and ``model.bfloat16()`` with the input
in that type, as those programs do. Printed per network: whether the output stays finite, the max and mean
|diff| to the fp32 output (in [0, 1] units), and the time of each call. The claim holds when every output is
finite and within the type's precision (fp16: 10 mantissa bits, bf16: 7).

    python benchmarks/spandrel_dtypes.py                      # every backbone, 64x64 crop, CPU
    python benchmarks/spandrel_dtypes.py --model net_g.pth --device cuda --size 256
"""
import argparse
import glob
import os
import os.path as osp
import sys
import tempfile
import time

# torch and d2csr are imported where they are used, after the arguments: --help answers at once

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def photo(size):
    import torch
    from skimage import data

    image = data.astronaut()[100:100 + size, 150:150 + size]
    return torch.from_numpy(image.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255


def candidates(args):
    if args.model:
        return [(osp.basename(args.model), args.model)]
    import torch
    from basicsr.archs import build_network

    from d2csr.convert import save_basicsr_checkpoint
    from d2csr.loading import read_network_options

    found = []
    for yml in sorted(glob.glob(osp.join(ROOT, 'options', 'train_D2C*_div_x4.yml'))):
        opt = read_network_options(yml)
        if opt.get('upsampler') == 'bicubic_input':  # refused by spandrel: its scale is not in the weights
            continue
        torch.manual_seed(0)
        path = osp.join(args.folder, osp.basename(yml).replace('.yml', '.pth'))
        save_basicsr_checkpoint(build_network(dict(opt)), path)
        found.append((f'{osp.basename(yml)} ({opt.get("backbone", "rcan")})', path))
    return found


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=None, help='a D2C checkpoint (default: every options file, random weights)')
    parser.add_argument('--size', type=int, default=64, help='side of the photo crop (LR pixels)')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from d2csr.integrations.spandrel import _import_spandrel, install
    from d2csr.utils import device_from_flag

    try:
        spandrel = _import_spandrel()
    except ImportError as err:
        raise SystemExit(f'error: {err}') from None
    install(ignore_duplicates=True)
    device = device_from_flag(args.device)
    x = photo(args.size).to(device)
    print(f'spandrel {spandrel.__version__}, torch {torch.__version__}, {device}, {torch.get_num_threads()} '
          f'thread(s), load average {os.getloadavg()[0]:.2f}; input {tuple(x.shape)} (astronaut crop)')
    print(f'{"network":<42}{"dtype":<10}{"finite":<8}{"max |diff|":>12}{"mean |diff|":>13}{"time (s)":>10}')
    with tempfile.TemporaryDirectory() as folder:
        args.folder = folder
        for name, path in candidates(args):
            model = spandrel.ModelLoader(device).load_from_file(path).eval()
            start = time.perf_counter()
            ref = model(x)
            rows = [('float32', ref, time.perf_counter() - start)]
            for dtype, claimed in ((torch.float16, model.supports_half), (torch.bfloat16, model.supports_bfloat16)):
                model.to(dtype)
                start = time.perf_counter()
                out = model(x.to(dtype)).float()
                rows.append((f'{str(dtype)[6:]}{"" if claimed else " (not claimed)"}', out,
                             time.perf_counter() - start))
                model.float()
            for label, out, seconds in rows:
                diff = (out - ref).abs()
                print(f'{name:<42}{label:<10}{str(bool(torch.isfinite(out).all())):<8}{float(diff.max()):>12.2e}'
                      f'{float(diff.mean()):>13.2e}{seconds:>10.2f}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
