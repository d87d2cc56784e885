"""The d2csr demo: a small two-stage D2C-SR training and test on real photographs, in minutes.

1. builds an x4 data set from scikit-image's bundled photographs (10 training photos, 2 held-out ones),
   degraded like a camera would (blur, downsampling, noise, JPEG);
2. trains a small D2C (L=2, C=2: 4 branches; 32 features, G=2, B=1) through ``d2csr/train.py``:
   stage 1, the divergence tree, then stage 2, the convergence net with the tree frozen;
3. tests it through ``d2csr/test.py`` (PSNR/SSIM on the held-out photos, SR images written);
4. prints the table: bicubic (MATLAB imresize), each branch, the mean of the branches, the fused output, the
   oracle fusion, and the convergence weights' mean |W - 1/P| (:mod:`d2csr.evaluation`).

Everything lands in ``demo_output/`` (data, options, results table) and BasicSR's ``experiments/`` and
``results/`` folders. ``--div-iters`` / ``--conv-iters`` change the training length. It runs on the GPU when
there is one (``--device auto``, the default) and says which device it uses; ``--device cpu`` / ``cuda`` /
``cuda:N`` chooses.
"""
import argparse
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, ROOT)
# yaml, torch and d2csr are imported where they are used, after the arguments: --help answers at once

SCALE = 4
NETWORK = dict(type='D2CSR', num_feat=32, num_group=2, num_block=1, squeeze_factor=8, upscale=SCALE, depth=2,
               width=2, deep_residual=True, bicubic_skip=True)


def subprocess_device(name):
    """The device ``--device`` names, for this process and the entry points it starts
    (:func:`d2csr.utils.subprocess_device`)."""
    from d2csr.utils import subprocess_device as device_for

    return device_for(name)


def build_photo_pairs(root, scale, **kwargs):
    """The x4 data set from scikit-image's photographs (:func:`d2csr.data.photo_pairs.build_photo_pairs`)."""
    from d2csr.data.photo_pairs import build_photo_pairs as build

    return build(root, scale, **kwargs)


def run(script, opt, opt_dir, threads, env=None):
    import yaml

    from d2csr.utils import pythonpath_env, thread_env

    path = osp.join(opt_dir, f'{opt["name"]}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    print(f'\n$ python {osp.relpath(osp.join(ROOT, "d2csr", script + ".py"))} -opt {osp.relpath(path)}', flush=True)
    env = thread_env(threads, dict(pythonpath_env(ROOT), **(env or {})))
    proc = subprocess.Popen([sys.executable, osp.join(ROOT, 'd2csr', f'{script}.py'), '-opt', path], cwd=os.getcwd(),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # show BasicSR's progress lines and metrics, not the option dump
        if ' INFO: [' in line or '# psnr' in line or '# ssim' in line or 'Validation' in line or 'Error' in line:
            print('   ', line.rstrip(), flush=True)
    if proc.wait() != 0:
        sys.exit(f'{script}.py failed for {path}; see its log under experiments/ or results/')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--div-iters', type=int, default=500, help='stage-1 iterations (default 500)')
    parser.add_argument('--conv-iters', type=int, default=150, help='stage-2 iterations (default 150)')
    parser.add_argument('--out', default='demo_output', help='folder for data, options, table (default: demo_output)')
    parser.add_argument('--name', default='D2C_demo_x4', help='experiment name prefix')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads for training and testing (default: the CPUs this process may use '
                             'minus the current load average, at least 1)')
    parser.add_argument('--device', default='auto',
                        help='auto (the first GPU when there is one, else the CPU), cpu, cuda or cuda:N')
    parser.add_argument('--amp', choices=('bf16', 'fp16'), default=None,
                        help='train and test under torch.autocast in this type (train: amp / val: amp; default fp32); '
                             'the final table evaluates the weights in fp32')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from d2csr.data.photo_pairs import photo_pair_paths
    from d2csr.evaluation import evaluate_pairs, format_table
    from d2csr.loading import load_model
    from d2csr.options import test_options, train_options
    from d2csr.utils import compute_threads

    start = time.time()
    threads = args.threads or compute_threads()
    torch.set_num_threads(threads)
    where = subprocess_device(args.device)
    print(f'Device: {where.description} (num_gpu: {where.num_gpu} in the option files)', flush=True)
    print(f'Using {threads} CPU thread(s) (--threads to change; the data loaders run in the main process); '
          f'precision {args.amp or "fp32"}.')
    data_root, opt_dir = osp.join(args.out, 'data'), osp.join(args.out, 'options')
    os.makedirs(opt_dir, exist_ok=True)
    print('[1/4] Building the x4 data set from scikit-image photographs (blur, downsampling, noise, JPEG)...')
    build_photo_pairs(data_root, SCALE, max_side=512, val_max_side=256)

    div, conv, test = f'{args.name}_div', f'{args.name}_conv', f'{args.name}_test'
    for name in (div, conv):  # a fresh run, not a resume of an older demo
        shutil.rmtree(osp.join('experiments', name), ignore_errors=True)
    shutil.rmtree(osp.join('results', test), ignore_errors=True)

    print(f'[2/4] Stage 1: divergence tree, {args.div_iters} iterations ({where.device})...')
    run('train', train_options(div, 'divergence', data_root, NETWORK, args.div_iters, num_gpu=where.num_gpu,
                               amp=args.amp), opt_dir, threads, where.env)
    div_weights = osp.abspath(osp.join('experiments', div, 'models', 'net_g_latest.pth'))
    print(f'[3/4] Stage 2: convergence net (tree frozen), {args.conv_iters} iterations...')
    run('train', train_options(conv, 'convergence', data_root, NETWORK, args.conv_iters, pretrain=div_weights,
                               num_gpu=where.num_gpu, amp=args.amp), opt_dir, threads, where.env)
    weights = osp.abspath(osp.join('experiments', conv, 'models', 'net_g_latest.pth'))
    print('[4/4] Testing on the held-out photographs...')
    run('test', test_options(test, data_root, NETWORK, weights, num_gpu=where.num_gpu, amp=args.amp), opt_dir,
        threads, where.env)

    net, _ = load_model(weights, NETWORK, param_key='params')
    pairs = photo_pair_paths(data_root, 'val')
    results = evaluate_pairs(net.to(where.device), pairs, SCALE, device=where.device)
    minutes = (time.time() - start) / 60
    table = format_table(results, title=f'D2C demo, x4, held-out photos ({", ".join(osp.basename(hr) for _, hr in pairs)}), '
                                       f'{args.div_iters} + {args.conv_iters} iterations, {minutes:.1f} min, '
                                       f'{where.description}' + (f', trained in {args.amp}' if args.amp else ''))
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print('\n' + table)
    print(f'\nSR images: results/{test}/visualization/ ; weights: {osp.relpath(weights)} ; '
          f'table: {osp.relpath(osp.join(args.out, "results.md"))}')


if __name__ == '__main__':
    main()
