"""How far the paper's metric (the authors' PSNR / SSIM) is from BasicSR's Y-channel metric, and what BasicSR's
8-bit rounding of the output changes in it: per photo, on an x4 SR image (the bicubic upsampling of a degraded LR,
float, as a network's output is).

    python benchmarks/paper_metric_gap.py [--scale 4] [--photos astronaut coffee ...]

Prints, per photo: the paper's PSNR on the float output and on its 8-bit rounding, BasicSR's Y PSNR
(``test_y_channel: true``, ``crop_border = scale``, 8-bit), and the same three for SSIM (BasicSR's SSIM shaves
``scale`` pixels, as the option files set it); then the largest gaps. Deterministic (seeded degradation).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))
# numpy, torch, BasicSR and d2csr are imported in main(), after the arguments: --help answers at once


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--photos', nargs='+', default=None,
                        help='scikit-image photographs by name (default: the demo\'s held-out and training photos, '
                             'd2csr.data.photo_pairs.VAL_PHOTOS + TRAIN_PHOTOS)')
    parser.add_argument('--max-side', type=int, default=480, help='centre crop of the HR photo (default 480)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    import d2csr  # noqa: F401  (BasicSR shim)
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils.matlab_functions import imresize
    from d2csr.data.photo_pairs import TRAIN_PHOTOS, VAL_PHOTOS, crop_to_multiple, degrade, load_photo
    from d2csr.metrics.paper_metrics import calculate_d2csr_paper_psnr, calculate_d2csr_paper_ssim

    photos = args.photos or list(VAL_PHOTOS + TRAIN_PHOTOS)
    s = args.scale
    rows = []
    print(f'x{s}, SR = bicubic (MATLAB imresize) of a degraded LR; PSNR in dB')
    print(f'{"photo":<22}{"paper":>9}{"paper 8b":>10}{"BasicSR Y":>11}   {"paper":>7}{"paper 8b":>10}{"BasicSR Y":>11}')
    for index, name in enumerate(photos):
        hr = crop_to_multiple(load_photo(name), s, args.max_side)
        lr = degrade(hr, s, np.random.default_rng([0, s, index, 1]))
        sr = imresize(lr.astype(np.float64) / 255., s)  # float, may leave [0, 1]
        sr_bgr, hr_bgr = sr[..., ::-1], hr[..., ::-1]  # BasicSR's and the authors' order
        sr8 = np.round(np.clip(sr_bgr, 0, 1) * 255).astype(np.uint8)
        hr_f = hr_bgr.astype(np.float64) / 255.
        row = (calculate_d2csr_paper_psnr(sr_bgr, hr_f, s), calculate_d2csr_paper_psnr(sr8, hr_bgr, s),
               calculate_psnr(sr8, hr_bgr, s, test_y_channel=True),
               calculate_d2csr_paper_ssim(sr_bgr, hr_f), calculate_d2csr_paper_ssim(sr8, hr_bgr),
               calculate_ssim(sr8, hr_bgr, s, test_y_channel=True))
        rows.append(row)
        print(f'{name:<22}{row[0]:9.4f}{row[1]:10.4f}{row[2]:11.4f}   {row[3]:7.4f}{row[4]:10.4f}{row[5]:11.4f}')
    r = np.array(rows)
    print(f'\npaper PSNR, float - 8-bit: {np.abs(r[:, 0] - r[:, 1]).max():.4f} dB at most '
          f'(mean {np.abs(r[:, 0] - r[:, 1]).mean():.4f})')
    print(f'paper SSIM, float - 8-bit: {np.abs(r[:, 3] - r[:, 4]).max():.5f} at most')
    print(f'paper PSNR - BasicSR Y PSNR: {(r[:, 0] - r[:, 2]).min():+.3f} .. {(r[:, 0] - r[:, 2]).max():+.3f} dB')
    print(f'paper SSIM - BasicSR Y SSIM: {(r[:, 3] - r[:, 5]).min():+.4f} .. {(r[:, 3] - r[:, 5]).max():+.4f}')


if __name__ == '__main__':
    main()
