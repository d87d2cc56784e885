r"""Evidence that D2C works: the paper's claims reproduced in small on real photographs.

Trains, with BasicSR's pipeline through ``d2csr/train.py``, on an x4 data set built from scikit-image's
photographs (10 training photos, 2 held-out ones; blur, downsampling, noise, JPEG; fixed seeds):

1. a small D2C (L=2, C=2; 32 features, G=2, B=1: the paper's small baseline of Table 4), two stages;
2. a single-branch RCAN with at least as many parameters (a D2CSR with L=1, C=1 and more RCAB blocks:
   head, residual groups, global skip, upsampler), same data, same number of updates;
3. the same D2C with the divergence term off (alpha = 0) and with the deep residual structure off
   (paper Table 5);
4. an alpha sweep (paper Fig. 9): branch diversity, branch / mean / fused / oracle PSNR and the logged gradient
   ratio |grad(alpha T_D)| / |grad(L2)| against alpha (the authors' 2e-5 and the shipped alpha included), the
   shipped alpha with 1000x the authors' margins, and the shipped alpha switched on and off like the authors'
   schedule (its windows scaled to the run's length);
5. a width / depth sweep (paper Table 4);
6. what the convergence net adds: stage 2 of the small D2C continued to growing budgets (``--fusion-budgets``,
   multiples of the plan's stage-2 length; one run, its checkpoints), the learned fusion against the plain mean
   of the branches and the best branch, plus one variant that is not the paper's, clearly labelled: the
   convergence net without the ReLU before its softmax (``fusion_last_relu: false``).

Then it measures every model on the held-out photos (PSNR/SSIM on Y, border 4: bicubic (MATLAB imresize),
each branch, the mean of the branches, fused, oracle fusion; the convergence weights' mean ``|W - 1/P|``)
and writes ``<out>/evidence.md`` with the tables, ``<out>/evidence/*.png`` plots (PSNR over iterations,
diversity and PSNR against alpha, fusion gains against the stage-2 budget, a visual panel) and
``<out>/evidence/results.json``. ``--out`` may also name the report itself (``docs/evidence_gpu.md``: the
plots go to ``docs/evidence_gpu/``).

``--plan fusion`` runs only the small D2C and item 6 (for a GPU run with a larger budget); ``--plan alpha`` only
the small D2C and item 4 (``--alphas`` sets the swept values);
``--device cuda`` trains and evaluates on the GPU (``num_gpu: 1``, 4 data workers). The GPU run of the fusion
study in ``docs/evidence_gpu.md``::

    python benchmarks/d2c_evidence.py --device cuda --plan fusion --iters 600 --conv-iters 30 \
        --fusion-budgets 4,16,64 --out docs/evidence_gpu.md

Each report names the command that wrote it, its run time and device; the figures are in the reports
(``docs/evidence.md``: the committed CPU run; ``docs/evidence_gpu.md``: the GPU fusion study).

``--quick`` runs a reduced plan in a few minutes; ``--iters`` sets the stage-1 length, ``--conv-iters`` the
stage-2 length (default a quarter of it).
"""
import argparse
import json
import math
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import yaml

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, ROOT)
# torch, BasicSR and d2csr are imported where they are used, after the arguments: --help answers at once

SCALE = 4
MARGIN_FACTOR = 1000  # the margins run: the authors' margins times this
SMALL = dict(type='D2CSR', num_feat=32, num_group=2, num_block=1, squeeze_factor=8, upscale=SCALE, depth=2, width=2)


def count_params(net_opt):
    from basicsr.archs import build_network

    return sum(p.numel() for p in build_network(net_opt).parameters())


def rcan_like(target_params, base):
    """A single-branch D2CSR (L=1, C=1, 4 residual groups) with the fewest blocks reaching ``target_params``."""
    opt = dict(base, depth=1, width=1, num_group=4)
    for blocks in range(1, 64):
        opt['num_block'] = blocks
        if count_params(opt) >= target_params:
            return opt
    raise RuntimeError('could not size the RCAN baseline')


class Plan:
    """Which runs to make. Each run: a tag, its network options, alpha, whether it has a stage 2 and its
    divergence-option overrides (margins, schedule)."""

    def __init__(self, quick, iters, bicubic_skip, conv_iters=None, fusion_budgets=None, kind='full', alphas=None,
                 num_feat=SMALL['num_feat']):
        from d2csr.options import AUTHORS_ALPHA, DIVERGENCE_ALPHA, DIVERGENCE_MARGINS

        self.authors_alpha = AUTHORS_ALPHA  # the authors' diver_w (the paper gives no value)
        self.shipped_alpha = DIVERGENCE_ALPHA  # what options/train_D2C_div_*.yml ship
        self.margins = DIVERGENCE_MARGINS  # the authors' (root level, deeper levels)
        self.iters = iters
        self.kind = kind
        self.curve_points = 2 if quick else 4
        # photographs centre-cropped to these sides (training, held-out): every run is measured on the held-out ones
        self.max_side, self.val_max_side = (256, 128) if quick else (512, 256)
        self.conv_iters = conv_iters or max(iters // 4, 2)
        self.base = dict(SMALL, bicubic_skip=bicubic_skip, num_feat=num_feat)
        # item 6: stage 2 of the small D2C continued to these multiples of conv_iters (one run each, checkpoints)
        self.fusion_budgets = sorted(fusion_budgets or ([2, 4] if quick else [4, 16, 64]))
        self.fusion_variants = OrderedDict([
            ('faithful', dict(net=self.base, label='faithful (the paper\'s convergence net)')),
            ('no_last_relu', dict(net=dict(self.base, fusion_last_relu=False),
                                  label='VARIANT, not the paper: no ReLU before the softmax')),
        ])
        d2c_params = count_params(self.base)
        self.runs = OrderedDict()
        self.add('d2c', self.base, self.shipped_alpha)
        self.alphas, self.trees, self.variants = [], [], []
        if kind == 'fusion':
            return
        if kind == 'full':
            self.add('rcan', rcan_like(d2c_params, self.base), 0.0, stage2=False)
        self.add('d2c_alpha0', self.base, 0.0)
        if kind == 'full':
            self.add('d2c_no_deep_res', dict(self.base, deep_residual=False), self.shipped_alpha)
        default = [] if quick else [2e-4, 2e-3, 5e-3, 1e-2, 5e-2, 1e-1]
        self.alphas = sorted({0.0, self.authors_alpha, self.shipped_alpha, *(default if alphas is None else alphas)})
        for alpha in self.alphas:
            if alpha not in (0.0, self.shipped_alpha):
                self.add(self.alpha_tag(alpha), self.base, alpha)
        # the margins: the authors' times MARGIN_FACTOR; the schedule: on and off as the authors' adjust_diver
        # (first window at epochs 1000-1199 of 20000, on 200 of every 1000, halved every 2000), scaled to iters
        margins = [m * MARGIN_FACTOR for m in self.margins[:2]]
        self.add('d2c_margins_x1000', self.base, self.shipped_alpha,
                 overrides={'train:divergence_opt:margins': margins})
        per = lambda epochs: max(round(iters * epochs / 20000), 1)  # noqa: E731
        self.windows = dict(start_iter=per(200), period=per(1000), on_iters=per(200), decay_every=per(2000),
                            decay_factor=0.5)
        self.add('d2c_authors_windows', self.base, self.shipped_alpha,
                 overrides={'train:divergence_opt:alpha_schedule': dict(self.windows)})
        shipped = self.shipped_alpha
        self.variants = [('d2c_margins_x1000', f'alpha {shipped:g}, margins x{MARGIN_FACTOR} ({margins[0]:g} / '
                          f'{margins[1]:g})'),
                         ('d2c_authors_windows', f'alpha {shipped:g}, on and off like the authors\' schedule '
                          f'(iterations: start {self.windows["start_iter"]}, on {self.windows["on_iters"]} of every '
                          f'{self.windows["period"]}, halved every {self.windows["decay_every"]})')]
        if kind != 'full':
            return
        self.trees = [(1, 2), (2, 2)] if quick else [(1, 1), (1, 2), (1, 3), (2, 2), (3, 2)]
        for depth, width in self.trees:
            if (depth, width) != (2, 2):
                self.add(f'tree_L{depth}C{width}', dict(self.base, depth=depth, width=width), self.shipped_alpha,
                         stage2=depth * width > 1)

    def add(self, tag, net, alpha, stage2=True, overrides=None):
        self.runs[tag] = dict(net=net, alpha=alpha, stage2=stage2, overrides=overrides or {})

    def alpha_tag(self, alpha):
        return {0.0: 'd2c_alpha0', self.shipped_alpha: 'd2c'}.get(alpha, f'alpha_{alpha:g}')

    def tree_tag(self, depth, width):
        return 'd2c' if (depth, width) == (2, 2) else f'tree_L{depth}C{width}'


def options(name, stage, net, alpha, iters, data_root, pretrain=None, ckpt_every=None, device='cpu', overrides=None):
    from d2csr.options import train_options

    gpu = device == 'cuda'  # on a GPU: data loading in 4 worker processes, long epochs (fewer worker restarts)
    return train_options(name, stage, data_root, net, iters, pretrain=pretrain, num_gpu=1 if gpu else 0,
                         num_workers=4 if gpu else 0, enlarge_ratio=1000 if gpu else 100, alpha=alpha,
                         validate=False, print_freq=max(iters // 5, 3), checkpoint_freq=ckpt_every,
                         overrides=overrides if stage == 'divergence' else None)


def logged_means(name, keys=('trip_grad_ratio', 'trip_active')):
    """Means over the log lines of ``experiments/<name>/train_*.log`` of ``keys`` (absent ones are left out)."""
    import glob
    import re

    logs = sorted(glob.glob(osp.join(os.getcwd(), 'experiments', name, 'train_*.log')))
    text = open(logs[-1]).read() if logs else ''
    out = {}
    for key in keys:
        values = [float(v) for v in re.findall(rf'{key}: ([-+0-9.e]+)', text)]
        if values:
            out[key] = float(np.mean(values))
    return out


RUN_DEVICE = {'num_gpu': 0, 'env': {'CUDA_VISIBLE_DEVICES': ''}, 'description': 'CPU'}  # main() sets it (--device)


def train(opt, opt_dir, log):
    opt = dict(opt, num_gpu=RUN_DEVICE['num_gpu'])
    path = osp.join(opt_dir, f'{opt["name"]}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    start = time.time()
    proc = run_train_script(path, RUN_DEVICE['env'])
    if proc.returncode != 0:
        sys.exit(f'training {opt["name"]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}')
    log(f'    trained {opt["name"]} ({opt["train"]["total_iter"]} iterations, {time.time() - start:.0f} s)')


def run_train_script(path, env):
    """``python d2csr/train.py -opt <path>`` in its own process, with ``env`` (the device) added to this one's
    environment; returns the CompletedProcess (output captured)."""
    from d2csr.utils import pythonpath_env

    return subprocess.run([sys.executable, osp.join(ROOT, 'd2csr', 'train.py'), '-opt', path], cwd=os.getcwd(),
                          env=dict(pythonpath_env(ROOT), **env), capture_output=True, text=True)


def load_net(net_opt, path, device='cpu'):
    from d2csr.loading import load_model

    return load_model(path, net_opt, param_key='params')[0].to(device)


def branch_diversity(net, pairs):
    """:func:`d2csr.evaluation.diversity_of_pairs`: mean over images and branch pairs of ``mean((res_i - res_j)^2)``,
    ``res = |G(I_i) - G(HR)|`` (eq. 2-3)."""
    from d2csr.evaluation import diversity_of_pairs

    return diversity_of_pairs(net, pairs, SCALE, next(net.parameters()).device)


def mean_branch_psnr(results):
    branches = [m['psnr'] for row, m in results.items() if row.startswith('branch')]
    return float(np.mean(branches))


def run_all(plan, data_root, work, prefix, log):
    from d2csr.data.photo_pairs import photo_pair_paths
    from d2csr.evaluation import evaluate_pairs

    opt_dir = osp.join(work, 'options')
    os.makedirs(opt_dir, exist_ok=True)
    pairs = photo_pair_paths(data_root)
    device = plan.device
    ckpt_every = max(plan.iters // plan.curve_points, 1)
    out = OrderedDict()
    for tag, run in plan.runs.items():
        log(f'[{len(out) + 1}/{len(plan.runs)}] {tag}: L={run["net"].get("depth")} C={run["net"].get("width")} '
            f'alpha={run["alpha"]:g} deep_residual={run["net"].get("deep_residual", True)}')
        div, conv = f'{prefix}{tag}_div', f'{prefix}{tag}_conv'
        for name in (div, conv):
            shutil.rmtree(osp.join(os.getcwd(), 'experiments', name), ignore_errors=True)
        train(options(div, 'divergence', run['net'], run['alpha'], plan.iters, data_root, ckpt_every=ckpt_every,
                      device=device, overrides=run['overrides']), opt_dir, log)
        logged = logged_means(div)
        models = osp.join(os.getcwd(), 'experiments', div, 'models')
        curve = []
        for it in range(ckpt_every, plan.iters + 1, ckpt_every):
            res = evaluate_pairs(load_net(run['net'], osp.join(models, f'net_g_{it}.pth'), device), pairs, SCALE, device)
            curve.append((it, mean_branch_psnr(res)))
        weights = div_weights = osp.join(models, 'net_g_latest.pth')
        if run['stage2']:
            train(options(conv, 'convergence', run['net'], 0.0, plan.conv_iters, data_root, pretrain=weights,
                          device=device), opt_dir, log)
            weights = osp.join(os.getcwd(), 'experiments', conv, 'models', 'net_g_latest.pth')
        net = load_net(run['net'], weights, device)
        results = evaluate_pairs(net, pairs, SCALE, device)
        out[tag] = dict(net=run['net'], alpha=run['alpha'], params=sum(p.numel() for p in net.parameters()),
                        results=results, curve=curve, diversity=branch_diversity(net, pairs), weights=weights,
                        stage1_weights=div_weights, logged=logged, overrides=run['overrides'])
        log(f'    fused {results["fused"]["psnr"]:.2f} dB, mean of branches {results["mean"]["psnr"]:.2f} dB, '
            f'bicubic {results["bicubic"]["psnr"]:.2f} dB, oracle {results["oracle"]["psnr"]:.2f} dB, '
            f'diversity {out[tag]["diversity"]:.4f}, weight_mad {results["fused"]["weight_mad"]:.4f}, '
            f'trip_grad_ratio {logged.get("trip_grad_ratio", 0):.3g}, trip_active {logged.get("trip_active", 0):.2f}')
    return out, pairs


def fusion_point(results, iters, budget):
    """One row of the fusion-budget table: the learned fusion against the mean of the branches and the best branch."""
    best = max(m['psnr'] for row, m in results.items() if row.startswith('branch'))
    fused, mean = results['fused']['psnr'], results['mean']['psnr']
    return dict(iters=iters, budget=budget, fused=fused, mean=mean, best_branch=best, oracle=results['oracle']['psnr'],
                gain_over_mean=fused - mean, gain_over_best=fused - best, weight_mad=results['fused']['weight_mad'])


def run_fusion_budgets(plan, out, data_root, work, prefix, log):
    """Item 6: stage 2 of the small D2C, from its stage-1 weights, continued to ``max(fusion_budgets)`` times the
    plan's stage-2 length (lr 5e-4 halved at 70% of that), measured at each budget's checkpoint; once with the
    paper's convergence net and once with the variant. Returns ``{variant: [fusion_point, ...]}``, budget 0
    being the untrained convergence net of stage 1."""
    from d2csr.data.photo_pairs import photo_pair_paths
    from d2csr.evaluation import evaluate_pairs

    opt_dir = osp.join(work, 'options')
    pairs = photo_pair_paths(data_root)
    device = plan.device
    step = plan.conv_iters * math.gcd(*plan.fusion_budgets)
    total = plan.conv_iters * plan.fusion_budgets[-1]
    stage1 = out['d2c']['stage1_weights']
    sweeps = OrderedDict()
    for key, variant in plan.fusion_variants.items():
        log(f'[fusion] {variant["label"]}: stage 2 for {total} iterations ({plan.fusion_budgets[-1]}x {plan.conv_iters}), '
            f'measured at {", ".join(f"{b}x" for b in plan.fusion_budgets)}')
        name = f'{prefix}fusion_{key}_conv'
        shutil.rmtree(osp.join(os.getcwd(), 'experiments', name), ignore_errors=True)
        train(options(name, 'convergence', variant['net'], 0.0, total, data_root, pretrain=stage1, ckpt_every=step,
                      device=device), opt_dir, log)
        points = [fusion_point(evaluate_pairs(load_net(variant['net'], stage1, device), pairs, SCALE, device), 0, 0)]
        for budget in plan.fusion_budgets:
            it = plan.conv_iters * budget
            ckpt = osp.join(os.getcwd(), 'experiments', name, 'models', f'net_g_{it}.pth')
            points.append(fusion_point(evaluate_pairs(load_net(variant['net'], ckpt, device), pairs, SCALE, device),
                                       it, budget))
            p = points[-1]
            log(f'    {budget}x ({it} it): fused {p["fused"]:.3f} dB, {p["gain_over_mean"]:+.3f} dB over the mean, '
                f'{p["gain_over_best"]:+.3f} dB over the best branch, weight_mad {p["weight_mad"]:.4f}')
        sweeps[key] = points
    return sweeps


# --------------------------------------------------------------------------------------------------
# report
def alpha_plot(plan, out, fig_dir, plt):
    alphas = plan.alphas
    xs = np.arange(len(alphas))
    div = [out[plan.alpha_tag(a)]['diversity'] for a in alphas]
    fused = [out[plan.alpha_tag(a)]['results']['fused']['psnr'] for a in alphas]
    mean = [out[plan.alpha_tag(a)]['results']['mean']['psnr'] for a in alphas]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(xs, div, marker='o', color='tab:red', label='branch diversity')
    ax1.set_ylabel('branch diversity', color='tab:red')
    ax2 = ax1.twinx()
    ax2.plot(xs, fused, marker='s', color='tab:blue', label='fused PSNR')
    ax2.plot(xs, mean, marker='^', linestyle='--', color='tab:cyan', label='mean-of-branches PSNR')
    ax2.set_ylabel('PSNR (dB, Y), held-out', color='tab:blue')
    ax2.legend(fontsize=7, loc='lower left')
    labels = {plan.authors_alpha: '\n(authors)', plan.shipped_alpha: '\n(shipped)'}
    ax1.set_xticks(xs, [f'{a:g}{labels.get(a, "")}' for a in alphas])
    ax1.set_xlabel('alpha')
    path = osp.join(fig_dir, 'alpha_sweep.png')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fusion_plot(plan, sweeps, fig_dir, plt):
    """Gain of the learned fusion over the mean of the branches and over the best branch, and the weights'
    deviation from uniform, against the stage-2 budget."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for (key, points), colour in zip(sweeps.items(), ('tab:blue', 'tab:orange')):
        label = plan.fusion_variants[key]['label']
        xs = [max(p['iters'], 1) for p in points]
        ax1.plot(xs, [p['gain_over_mean'] for p in points], marker='o', color=colour, label=f'{label}: over the mean')
        ax1.plot(xs, [p['gain_over_best'] for p in points], marker='s', linestyle='--', color=colour,
                 label=f'{label}: over the best branch')
        ax2.plot(xs, [p['weight_mad'] for p in points], marker='o', color=colour, label=label)
    ax1.axhline(0, color='gray', linewidth=0.8)
    for ax in (ax1, ax2):
        ax.set_xscale('log')
        ax.set_xlabel('stage-2 iterations (0 plotted at 1: untrained convergence net)')
        ax.grid(alpha=0.3)
    ax1.set_ylabel('learned fusion PSNR gain (dB, Y), held-out')
    ax2.set_ylabel('convergence weights: mean |W - 1/P|')
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    path = osp.join(fig_dir, 'fusion_budgets.png')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_plots(plan, out, pairs, fig_dir, sweeps):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torch
    from basicsr.utils import img2tensor

    from d2csr.evaluation import read_rgb

    files = {}
    bicubic = out['d2c']['results']['bicubic']['psnr']
    fig, ax = plt.subplots(figsize=(6, 4))
    for tag in [t for t in ('d2c', 'rcan', 'd2c_alpha0', 'd2c_no_deep_res') if t in out]:
        its, psnr = zip(*out[tag]['curve'])
        ax.plot(its, psnr, marker='o', label=tag)
    ax.axhline(bicubic, color='gray', linestyle='--', label='bicubic')
    ax.set_xlabel('stage-1 iteration')
    ax.set_ylabel('mean branch PSNR (dB, Y), held-out')
    ax.legend()
    ax.grid(alpha=0.3)
    files['curves'] = osp.join(fig_dir, 'psnr_over_iterations.png')
    fig.tight_layout()
    fig.savefig(files['curves'], dpi=100)
    plt.close(fig)

    if plan.alphas:
        files['alpha'] = alpha_plot(plan, out, fig_dir, plt)
    if sweeps:
        files['fusion'] = fusion_plot(plan, sweeps, fig_dir, plt)

    net = load_net(out['d2c']['net'], out['d2c']['weights'])
    lr_path, hr_path = pairs[0]
    lr = img2tensor(read_rgb(lr_path), bgr2rgb=False).unsqueeze(0)
    hr = read_rgb(hr_path)[:lr.shape[-2] * SCALE, :lr.shape[-1] * SCALE]
    with torch.no_grad():
        branches = net.forward_branches(lr)
        sr, weights = net.fuse(branches)
    images = [('LR (nearest)', np.repeat(np.repeat(lr[0].permute(1, 2, 0).numpy(), SCALE, 0), SCALE, 1))]
    images += [(f'branch {i + 1}', b[0].permute(1, 2, 0).clamp(0, 1).numpy()) for i, b in enumerate(branches)]
    images += [('mean of branches', torch.stack(branches).mean(0)[0].permute(1, 2, 0).clamp(0, 1).numpy()),
               ('fused', sr[0].permute(1, 2, 0).clamp(0, 1).numpy()), ('HR', hr)]
    maps = [(f'weight map {i + 1}', weights[0, i].numpy()) for i in range(weights.shape[1])]
    cols = max(len(images), len(maps))
    fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 4.6))
    for ax in axes.ravel():
        ax.axis('off')
    for ax, (title, img) in zip(axes[0], images):
        ax.imshow(np.clip(img, 0, 1))
        ax.set_title(title, fontsize=8)
    for ax, (title, img) in zip(axes[1], maps):
        ax.imshow(img, cmap='jet', vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    files['panel'] = osp.join(fig_dir, 'panel.png')
    fig.tight_layout()
    fig.savefig(files['panel'], dpi=100)
    plt.close(fig)
    return files


def results_table(out, tags):
    from d2csr.evaluation import BICUBIC_LABEL, MEAN_LABEL

    rows = (['bicubic'] + sorted({r for t in tags for r in out[t]['results'] if r.startswith('branch')})
            + ['mean', 'fused', 'oracle'])
    label = {'bicubic': BICUBIC_LABEL, 'mean': MEAN_LABEL}
    head = '| output | ' + ' | '.join(tags) + ' |'
    lines = [head, '| --- |' + ' ---: |' * len(tags)]
    for row in rows:
        cells = []
        for t in tags:
            m = out[t]['results'].get(row)
            cells.append(f'{m["psnr"]:.2f} / {m["ssim"]:.4f}' if m else '')
        lines.append(f'| {label.get(row, row)} | ' + ' | '.join(cells) + ' |')
    lines.append('| weights: mean \\|W - 1/P\\| | ' + ' | '.join(
        f'{out[t]["results"]["fused"]["weight_mad"]:.4f}' for t in tags) + ' |')
    lines.append('| parameters | ' + ' | '.join(f'{out[t]["params"]:,d}' for t in tags) + ' |')
    return '\n'.join(lines)


def verdict(a, b, what):
    diff = a - b
    word = 'above' if diff > 0.005 else ('below' if diff < -0.005 else 'equal to')
    return f'{what}: {abs(diff):.2f} dB {word}' if word != 'equal to' else f'{what}: equal'


def fusion_summary(plan, sweeps):
    faithful, variant = sweeps['faithful'][-1], sweeps['no_last_relu'][-1]
    return (f'After {faithful["iters"]} stage-2 iterations ({plan.fusion_budgets[-1]}x the plan\'s stage 2), the paper\'s '
            f'convergence net is {faithful["gain_over_mean"]:+.3f} dB against the plain mean of the branches and '
            f'{faithful["gain_over_best"]:+.3f} dB against the best branch (its weights\' mean |W - 1/P| '
            f'{faithful["weight_mad"]:.4f}); the variant without the ReLU before the softmax (not the paper\'s) is '
            f'{variant["gain_over_mean"]:+.3f} dB and {variant["gain_over_best"]:+.3f} dB (mean |W - 1/P| '
            f'{variant["weight_mad"]:.4f}). The oracle fusion is {faithful["oracle"] - faithful["mean"]:+.2f} dB above '
            'the mean.')


def fusion_section(plan, out, sweeps, files, rel):
    d2c = out['d2c']['results']
    num = sum(r.startswith('branch') for r in d2c)
    lines = ['## What the convergence net adds: learned fusion vs the mean of the branches', '',
             f'Stage 2 of the small D2C, from the same stage-1 tree, continued to {plan.fusion_budgets[-1]}x the plan\'s '
             f'stage-2 length ({plan.conv_iters} iterations): one run per convergence net, lr 5e-4 halved at 70% of '
             f'its length, measured at the checkpoints of {", ".join(f"{b}x" for b in plan.fusion_budgets)}; '
             '0 is the untrained convergence net of stage 1. The tree is frozen, so the branches, their mean and the '
             'best branch are the same in every row; only the fused output changes. "Gain" is the fused PSNR minus '
             f'that row\'s; mean |W - 1/P| is 0 for uniform weights (the mean) and {2 * (num - 1) / num**2:.3f} for '
             'one branch per pixel.', '',
             f'- Branches: {", ".join("%.3f" % d2c["branch%d" % (i + 1)]["psnr"] for i in range(num))} dB; mean of '
             f'branches {sweeps["faithful"][0]["mean"]:.3f} dB; oracle {sweeps["faithful"][0]["oracle"]:.3f} dB.',
             f'- The small D2C above (its own {plan.conv_iters}-iteration stage 2, 1x): fused {d2c["fused"]["psnr"]:.3f} dB, '
             f'{d2c["fused"]["psnr"] - d2c["mean"]["psnr"]:+.3f} dB over the mean, mean |W - 1/P| '
             f'{d2c["fused"]["weight_mad"]:.4f}.', '',
             '| convergence net | stage-2 iterations | budget | fused PSNR | gain over the mean | gain over the best branch '
             '| mean \\|W - 1/P\\| |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for key, points in sweeps.items():
        for p in points:
            budget = f'{p["budget"]}x' if p['budget'] else 'none (stage 1)'
            lines.append(f'| {plan.fusion_variants[key]["label"]} | {p["iters"]} | {budget} | {p["fused"]:.3f} | '
                         f'{p["gain_over_mean"]:+.3f} | {p["gain_over_best"]:+.3f} | {p["weight_mad"]:.4f} |')
    lines += ['', '**' + fusion_summary(plan, sweeps) + '**', '',
              f'![fusion gain against the stage-2 budget]({rel(files["fusion"])})', '']
    return lines


def alpha_row(out, tag, label):
    r, logged = out[tag]['results'], out[tag].get('logged', {})
    base = out['d2c_alpha0']['diversity']
    return (f'| {label} | {out[tag]["diversity"]:.4f} | {out[tag]["diversity"] / base:.2f}x | '
            f'{mean_branch_psnr(r):.2f} | {r["mean"]["psnr"]:.2f} | {r["fused"]["psnr"]:.2f} | {r["oracle"]["psnr"]:.2f} | '
            f'{logged.get("trip_grad_ratio", 0.0):.2g} | '
            + (f'{logged["trip_active"]:.2f}' if 'trip_active' in logged else '-') + ' |')


def alpha_summary(plan, out):
    """One paragraph: the shipped alpha against alpha 0 and the authors' 2e-5 (diversity, fused PSNR, ratio)."""
    zero, authors, shipped = (out[plan.alpha_tag(a)] for a in (0.0, plan.authors_alpha, plan.shipped_alpha))
    fused = lambda r: r['results']['fused']['psnr']  # noqa: E731
    ratio = lambda r: r.get('logged', {}).get('trip_grad_ratio', 0.0)  # noqa: E731
    inert = abs(authors['diversity'] / zero['diversity'] - 1) < 0.01 and abs(fused(authors) - fused(zero)) < 0.01
    return (f'At the authors\' alpha {plan.authors_alpha:g} the divergence term\'s gradient is {ratio(authors):.2g} '
            'of the '
            f'L2 gradient and the branches are ' + ('those of alpha 0' if inert else 'close to those of alpha 0')
            + f' (diversity {authors["diversity"]:.4f} vs {zero["diversity"]:.4f}, fused {fused(authors):.2f} vs '
            f'{fused(zero):.2f} dB)' + (': that is the paper\'s "w/o divergence loss" ablation' if inert else '')
            + f'. The shipped alpha {plan.shipped_alpha:g} (gradient ratio {ratio(shipped):.2g}) gives '
            f'{shipped["diversity"] / zero["diversity"]:.2f}x the diversity of alpha 0 and a fused PSNR of '
            f'{fused(shipped):.2f} dB ({fused(shipped) - fused(zero):+.2f} dB)')


def alpha_section(plan, out, files, rel):
    lines = ['## Alpha sweep (paper Fig. 9) and the shipped alpha', '',
             f'The divergence term, alpha * T_D (eq. 7), with alpha constant as in the paper, on the small D2C above: '
             f'{plan.iters} stage-1 and {plan.conv_iters} stage-2 iterations per row, the same seed and batches. '
             '"x alpha 0" is the branch diversity over that of alpha 0; "grad ratio" is the mean over the run\'s log '
             'lines of `trip_grad_ratio` = |grad(alpha T_D)| / |grad(L2)| over the tree\'s parameters, and "hinge on" '
             'of `trip_active`, the share of branch pairs whose triplet hinge is on (both logged by `d2csr/train.py` '
             'beside the losses).', '',
             '| alpha | branch diversity | x alpha 0 | mean branch PSNR | mean-of-branches PSNR | fused PSNR | '
             'oracle PSNR | grad ratio | hinge on |', '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for a in plan.alphas:
        label = f'{a:g}' + (' (authors\')' if a == plan.authors_alpha else
                            ' (shipped)' if a == plan.shipped_alpha else '')
        lines.append(alpha_row(out, plan.alpha_tag(a), label))
    for tag, label in plan.variants:
        lines.append(alpha_row(out, tag, label))
    lines += ['', '"mean branch PSNR" averages the branches\' PSNRs; "mean-of-branches PSNR" is the PSNR of their '
              'average image; fused and oracle as above.', '', '**' + alpha_summary(plan, out) + '.**', '']
    margins, windows, shipped = out['d2c_margins_x1000'], out['d2c_authors_windows'], out['d2c']
    same = all(margins['results'][k] == shipped['results'][k] for k in shipped['results'])
    active = [r['logged']['trip_active'] for t, r in out.items() if r['alpha'] > 0 and 'trip_active' in r['logged']]
    if active and min(active) == 1.0:
        why = ('the hinge of every branch pair was on at every logged step of every run with alpha > 0 (hinge on 1.00): '
               'the argument d(res_i, 0) - d(res_i, res_j) stays above the margins, so a margin only adds a constant '
               'to the loss and changes no gradient')
    else:
        why = f'the share of pairs whose hinge is on ranges over {min(active or [0]):.2f}-{max(active or [0]):.2f}'
    lines += [f'- Margins: {why}. With {MARGIN_FACTOR}x the authors\' margins every figure is '
              + ('the same, to the last digit.' if same else
                 f'close (diversity {margins["diversity"]:.4f} vs {shipped["diversity"]:.4f}, fused '
                 f'{margins["results"]["fused"]["psnr"]:.2f} vs {shipped["results"]["fused"]["psnr"]:.2f} dB).')
              + ' The shipped files keep the authors\' margins.',
              f'- Schedule: switched on and off like the authors\' `adjust_diver` (scaled to {plan.iters} iterations), the '
              f'shipped alpha gives diversity {windows["diversity"]:.4f} ({windows["diversity"] / out["d2c_alpha0"]["diversity"]:.2f}x '
              f'alpha 0) and fused {windows["results"]["fused"]["psnr"]:.2f} dB, against {shipped["diversity"]:.4f} and '
              f'{shipped["results"]["fused"]["psnr"]:.2f} dB with alpha on throughout (the paper\'s eq. 7).', '',
              f'![alpha sweep]({rel(files["alpha"])})', '']
    return lines


def write_report(plan, out, files, md_path, args, minutes, sweeps):
    from d2csr.evaluation import BICUBIC_LABEL, MEAN_LABEL

    fused = {t: r['results']['fused']['psnr'] for t, r in out.items()}
    rel = lambda p: osp.relpath(p, osp.dirname(md_path))  # noqa: E731
    full = plan.kind == 'full'
    d2c = out['d2c']['results']
    summary = (f'On held-out photos, the small D2C\'s fused output is {fused["d2c"] - d2c["bicubic"]["psnr"]:+.2f} dB '
               f'against bicubic, {fused["d2c"] - d2c["mean"]["psnr"]:+.3f} dB against the plain mean of its branches, '
               f'and its oracle fusion is {d2c["oracle"]["psnr"] - fused["d2c"]:+.2f} dB above the fused output')
    if full:
        summary += (f'; it is {fused["d2c"] - fused["rcan"]:+.2f} dB against a single-branch RCAN with at least as many '
                    'parameters')
    if plan.alphas:
        summary += '. ' + alpha_summary(plan, out)
    if sweeps:
        summary += '. ' + fusion_summary(plan, sweeps)
    else:
        summary += '.'
    command = ' '.join(['python benchmarks/d2c_evidence.py'] + args.argv)
    budgets = ','.join(str(b) for b in plan.fusion_budgets)
    lines = [
        '# Evidence: D2C-SR in small, on real photographs', '',
        f'Generated by `{command}` in {minutes:.1f} minutes on {RUN_DEVICE["description"]}. Every number and plot '
        f'below comes from that run; `{osp.basename(files["dir"])}/results.json` has them all.', '',
        '**Result.** ' + summary, '',
        '## Set-up', '',
        f'- Data: x{SCALE}; 10 training photographs and 2 held-out ones (coffee, chelsea) from scikit-image, '
        'degraded with blur, bicubic downsampling, noise and JPEG (`d2csr/data/photo_pairs.py`, fixed seeds).',
        f'- Training: BasicSR pipeline (`d2csr/train.py`), {RUN_DEVICE["description"]}, batch 4 of 32x32 LR patches, Adam 5e-4 '
        f'halved at 70%; stage 1: {plan.iters} iterations, stage 2 (convergence net, tree frozen): {plan.conv_iters} '
        'iterations' + (f'; the fusion study continues stage 2 to {budgets} times that.' if sweeps else '.'),
        f'- Small D2C: {plan.base["num_feat"]} features, G=2, B=1'
        + (' (the paper\'s small Table 4 baseline)' if plan.base['num_feat'] == SMALL['num_feat'] else '')
        + f', the shipped divergence term: alpha '
        f'{plan.shipped_alpha:g} (constant; the authors\' {plan.authors_alpha:g} in the sweep), margins '
        f'{plan.margins[0]:g} / {plan.margins[1]:g}, theta 0.8. Bicubic skip: '
        f'{"on" if plan.base.get("bicubic_skip") else "off"}.']
    if full:
        lines.append(f'- Single-branch RCAN: the same blocks in one branch (L=1, C=1, G=4, B={out["rcan"]["net"]["num_block"]}), '
                     f'{out["rcan"]["params"]:,d} parameters vs {out["d2c"]["params"]:,d}; same data and number of updates.')
    lines += [
        f'- Metrics: PSNR / SSIM on Y, border 4, BasicSR\'s functions (`d2csr/evaluation.py`, the same rows as the '
        f'validation log, the demo and the visualizer); "{BICUBIC_LABEL}" is BasicSR\'s MATLAB-style `imresize`; '
        f'"{MEAN_LABEL}" is the plain average of the branch images (uniform weights 1/P); "oracle" picks per pixel '
        'the branch closest to HR; "mean |W - 1/P|" is how far the convergence weights are from uniform.',
        '- Branch diversity: mean over held-out images and branch pairs of mean((res_i - res_j)^2), '
        'res = |G(I_i) - G(HR)| (eq. 2-3).', '']
    tags = ['d2c', 'rcan', 'd2c_alpha0', 'd2c_no_deep_res'] if full else [t for t in ('d2c', 'd2c_alpha0') if t in out]
    lines += ['## Models (PSNR / SSIM on the held-out photos)', '', results_table(out, tags), '']
    if full:
        lines += [
            '- ' + verdict(fused['d2c'], fused['rcan'], 'D2C fused vs single-branch RCAN'),
            '- ' + verdict(fused['d2c'], fused['d2c_alpha0'], 'D2C vs D2C without divergence term (paper Table 5)'),
            '- ' + verdict(fused['d2c'], fused['d2c_no_deep_res'], 'D2C vs D2C without the multi-branch deep residual '
                           '(paper Table 5: the intermediate residuals removed, the head-to-leaf skip kept)'),
            '']
    lines += [f'![PSNR over iterations]({rel(files["curves"])})', '']
    if sweeps:
        lines += fusion_section(plan, out, sweeps, files, rel)
    if plan.alphas:
        lines += alpha_section(plan, out, files, rel)
    if full:
        lines += ['## Width and depth (paper Table 4)', '',
                  '| L | C | P | parameters | mean-of-branches PSNR | fused PSNR | oracle PSNR |',
                  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        for depth, width in plan.trees:
            r = out[plan.tree_tag(depth, width)]
            lines.append(f'| {depth} | {width} | {width**depth} | {r["params"]:,d} | {r["results"]["mean"]["psnr"]:.2f} | '
                         f'{r["results"]["fused"]["psnr"]:.2f} | {r["results"]["oracle"]["psnr"]:.2f} |')
        lines.append('')
    lines += ['## The small D2C at work', '',
              f'![LR, branches, mean of branches, fused, HR and weight maps]({rel(files["panel"])})', '',
              '## What this shows and what it does not', '',
              '- These are minutes of training of networks 7x smaller than the paper\'s; the paper trains for days on '
              'RealSR. Differences of a few hundredths of a dB between runs are within run-to-run noise here.',
              '- Where a comparison above disagrees with the paper, that is what this budget gives; it is not evidence '
              'against the paper at full scale, and agreement is not proof of it either.',
              '- The alpha that acts depends on the setting (data, network size, patch and batch size): the ratio '
              '`trip_grad_ratio` in the training log tells, for any run, whether the divergence term acts.']
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return summary


def parse_alphas(text):
    try:
        alphas = sorted({float(a) for a in text.split(',') if a.strip()})
    except ValueError:
        alphas = [-1.0]
    if any(not math.isfinite(a) or a < 0 for a in alphas):
        raise argparse.ArgumentTypeError(f'--alphas: comma-separated numbers >= 0 (e.g. 2e-3,5e-2), got {text!r}')
    return alphas


def parse_budgets(text):
    try:
        budgets = sorted({int(b) for b in text.split(',') if b.strip()})
    except ValueError:
        budgets = []
    if not budgets or budgets[0] < 1:
        raise argparse.ArgumentTypeError(f'--fusion-budgets: comma-separated integers >= 1 (e.g. 4,16,64), got {text!r}')
    return budgets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='reduced plan (a few minutes)')
    parser.add_argument('--plan', choices=('full', 'fusion', 'alpha'), default='full',
                        help='full: every study; fusion: only the small D2C and the fusion-budget study; alpha: only '
                             'the small D2C and the alpha sweep')
    parser.add_argument('--alphas', type=parse_alphas, default=None,
                        help='alphas of the sweep besides 0, the authors\' 2e-5 and the shipped one (comma-separated; '
                             'default none with --quick, else 2e-4,2e-3,5e-3,1e-2,5e-2,1e-1)')
    parser.add_argument('--iters', type=int, default=None, help='stage-1 iterations (default 400, quick 40)')
    parser.add_argument('--conv-iters', type=int, default=None, help='stage-2 iterations (default iters / 4)')
    parser.add_argument('--fusion-budgets', type=parse_budgets, default=None,
                        help='stage-2 budgets of the fusion study, multiples of --conv-iters (default 4,16,64; quick 2,4)')
    parser.add_argument('--out', default=osp.join(ROOT, 'docs'),
                        help='folder for evidence.md and evidence/, or the report\'s path (X.md; plots in X/)')
    parser.add_argument('--prefix', default='evidence_', help='experiment name prefix under experiments/')
    parser.add_argument('--no-bicubic-skip', dest='bicubic_skip', action='store_false')
    parser.add_argument('--num-feat', type=int, default=SMALL['num_feat'],
                        help='features of the small D2C (default 32, the paper\'s small Table 4 baseline; fewer: a '
                             'smoke run of the whole report in less time)')
    parser.add_argument('--keep', action='store_true', help='keep the experiments/ folders of the runs')
    parser.add_argument('--device', default='auto',
                        help='where the trainings run: auto (the first GPU when there is one, else the CPU), '
                             'cpu, cuda or cuda:N')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from d2csr.data.photo_pairs import build_photo_pairs
    from d2csr.utils import subprocess_device

    where = subprocess_device(args.device)
    RUN_DEVICE.update(num_gpu=where.num_gpu, env=where.env, description=where.description)
    print(f'Device: {where.description} (num_gpu: {where.num_gpu} in the option files)', flush=True)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    iters = args.iters or (40 if args.quick else 400)
    start = time.time()
    torch.manual_seed(0)

    def log(msg):
        print(msg, flush=True)

    plan = Plan(args.quick, iters, args.bicubic_skip, args.conv_iters, args.fusion_budgets, args.plan, args.alphas,
                args.num_feat)
    plan.device = where.device.type  # 'cuda': data workers and evaluation on the GPU
    if args.out.endswith('.md'):
        md_path, fig_dir = args.out, args.out[:-len('.md')]
    else:
        md_path, fig_dir = osp.join(args.out, 'evidence.md'), osp.join(args.out, 'evidence')
    work = osp.join(fig_dir, 'work')
    os.makedirs(fig_dir, exist_ok=True)
    log(f'Building the data set and {len(plan.runs)} runs of {iters} (+{plan.conv_iters}) iterations'
        + (f', then the fusion study (stage 2 up to {plan.fusion_budgets[-1] * plan.conv_iters} iterations, 2 runs)'
           if plan.kind != 'alpha' else '') + f' on {where.description}...')
    data_root = osp.join(work, 'data')
    build_photo_pairs(data_root, SCALE, max_side=plan.max_side, val_max_side=plan.val_max_side)
    out, pairs = run_all(plan, data_root, work, args.prefix, log)
    sweeps = run_fusion_budgets(plan, out, data_root, work, args.prefix, log) if plan.kind != 'alpha' else {}
    files = save_plots(plan, out, pairs, fig_dir, sweeps)
    files['dir'] = fig_dir
    minutes = (time.time() - start) / 60
    summary = write_report(plan, out, files, md_path, args, minutes, sweeps)
    with open(osp.join(fig_dir, 'results.json'), 'w') as f:
        json.dump({'iters': iters, 'conv_iters': plan.conv_iters, 'alphas': plan.alphas, 'trees': plan.trees,
                   'plan': plan.kind, 'device': RUN_DEVICE['description'], 'minutes': minutes,
                   'fusion_budgets': plan.fusion_budgets, 'shipped_alpha': plan.shipped_alpha,
                   'authors_alpha': plan.authors_alpha,
                   'variants': plan.variants,
                   'fusion': {k: dict(label=plan.fusion_variants[k]['label'], points=v) for k, v in sweeps.items()},
                   'runs': {t: {k: v for k, v in r.items() if k not in ('weights', 'stage1_weights')}
                            for t, r in out.items()}}, f, indent=1)
    if not args.keep:
        for tag in plan.runs:
            for stage in ('div', 'conv'):
                shutil.rmtree(osp.join(os.getcwd(), 'experiments', f'{args.prefix}{tag}_{stage}'), ignore_errors=True)
        for key in plan.fusion_variants:
            shutil.rmtree(osp.join(os.getcwd(), 'experiments', f'{args.prefix}fusion_{key}_conv'), ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    log('\n' + summary)
    log(f'Report: {md_path}')


if __name__ == '__main__':
    main()
