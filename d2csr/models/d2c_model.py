"""The two-stage D2C-SR model (paper Sec. 3.4): train the divergence tree, then the convergence net.

One ``network_g`` (:class:`d2csr.archs.D2CSR`) holds both parts, so one ``net_g_*.pth`` carries both.
``train: stage`` picks what a run trains:

- ``divergence``: the tree, with :class:`~d2csr.losses.DivergenceLoss` (``train: divergence_opt``);
  the convergence net gets no gradient and is not in the optimizer;
- ``convergence``: the convergence net, with ``train: convergence_opt``; the tree comes from
  ``path: pretrain_network_g`` (stage 1) and is frozen: no gradients, eval mode, not in the optimizer;
- ``joint``: both at every step, as the authors' code does (``optim_g`` for the tree, ``optim_c``
  for the convergence net, which defaults to ``optim_g``'s settings).

Validation reports BasicSR's metrics on the fused output and also logs each branch's PSNR and the PSNR of
the oracle fusion (per pixel, the branch closest to HR: the paper's upper bound, Sec. 4.6).
"""
import os.path as osp
from collections import OrderedDict
from copy import deepcopy

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics import calculate_psnr
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY

STAGES = ('divergence', 'convergence', 'joint')


def oracle_fusion(branches, target):
    """Per pixel, the branch value closest to ``target`` (squared error summed over channels).

    ``branches``: list of ``P`` tensors ``(N, C, H, W)``; ``target``: ``(N, C, H, W)``. Returns ``(N, C, H, W)``.
    """
    stacked = torch.stack(branches)  # (P, N, C, H, W)
    best = ((stacked - target.unsqueeze(0))**2).sum(dim=2, keepdim=True).argmin(dim=0, keepdim=True)
    return stacked.gather(0, best.expand(1, *stacked.shape[1:])).squeeze(0)


@MODEL_REGISTRY.register()
class D2CModel(SRModel):
    """Divergence / convergence / joint training of a :class:`~d2csr.archs.D2CSR` ``network_g``."""

    def __init__(self, opt):
        if opt['is_train']:
            stage = opt['train'].get('stage')
            if stage not in STAGES:
                raise ValueError(f'train:stage must be one of {STAGES}, got {stage!r}')
            pretrain = opt['path'].get('pretrain_network_g')
            if stage == 'convergence' and not pretrain and not opt['path'].get('resume_state'):
                raise ValueError('train:stage is "convergence" but path:pretrain_network_g is not set: the '
                                 'convergence stage needs the divergence weights of stage 1 (e.g. '
                                 'experiments/<stage-1 name>/models/net_g_latest.pth).')
        for key in ('pretrain_network_g', 'resume_state'):
            path = opt['path'].get(key)
            if path and not osp.isfile(path):
                raise FileNotFoundError(f'path:{key} {path!r} does not exist; check the path in your options file.')
        super().__init__(opt)

    # ----------------------------------------------------------------------------------------------
    # training set-up
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.stage = train_opt['stage']
        net = self.get_bare_model(self.net_g)
        if self.stage == 'divergence':
            trained, frozen = net.divergence_parameters(), net.convergence_parameters()
        elif self.stage == 'convergence':
            trained, frozen = net.convergence_parameters(), net.divergence_parameters()
        else:
            trained, frozen = list(net.parameters()), []
        for p in frozen:
            p.requires_grad_(False)
        self.set_train_mode()

        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay > 0:
            get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
            self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()

        self.cri_div = self.cri_conv = None
        if self.stage in ('divergence', 'joint'):
            if not train_opt.get('divergence_opt'):
                raise ValueError(f'train:divergence_opt is required for stage {self.stage!r}')
            self.cri_div = build_loss(train_opt['divergence_opt']).to(self.device)
        if self.stage in ('convergence', 'joint'):
            if not train_opt.get('convergence_opt'):
                raise ValueError(f'train:convergence_opt is required for stage {self.stage!r}')
            self.cri_conv = build_loss(train_opt['convergence_opt']).to(self.device)

        self.setup_optimizers(trained)
        self.setup_schedulers()

    def set_train_mode(self):
        """``train()`` for what this stage trains; a frozen tree stays in eval mode."""
        net = self.get_bare_model(self.net_g)
        net.train()
        if getattr(self, 'stage', None) == 'convergence':
            for name, child in net.named_children():
                if name != 'fusion':
                    child.eval()

    def setup_optimizers(self, trained=None):
        train_opt = self.opt['train']
        net = self.get_bare_model(self.net_g)
        optim_opt = deepcopy(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        if self.stage == 'joint':
            conv_opt = deepcopy(train_opt.get('optim_c') or train_opt['optim_g'])
            conv_type = conv_opt.pop('type')
            self.optimizer_g = self.get_optimizer(optim_type, net.divergence_parameters(), **optim_opt)
            self.optimizer_c = self.get_optimizer(conv_type, net.convergence_parameters(), **conv_opt)
            self.optimizers.extend([self.optimizer_g, self.optimizer_c])
        else:
            self.optimizer_g = self.get_optimizer(optim_type, trained, **optim_opt)
            self.optimizers.append(self.optimizer_g)
        num = sum(p.numel() for group in self.optimizer_g.param_groups for p in group['params'])
        get_root_logger().info(f'D2C stage "{self.stage}": optimizing {num:,d} parameters with optim_g.')

    # ----------------------------------------------------------------------------------------------
    # one training step
    def optimize_parameters(self, current_iter):
        loss_dict = OrderedDict()
        if self.stage in ('divergence', 'joint'):
            self.optimizer_g.zero_grad(set_to_none=True)
            branches = self.net_g(self.lq, mode='branches')
            terms = self.cri_div.terms(branches, self.gt, current_iter)
            terms['l_div'].backward()
            self.optimizer_g.step()
            loss_dict['l_branch'] = terms['l_branch'].detach()
            loss_dict['l_triplet'] = terms['l_triplet'].detach()
            loss_dict['alpha'] = torch.tensor(terms['alpha'], device=self.device)
            del branches, terms
        if self.stage in ('convergence', 'joint'):
            optimizer = self.optimizer_c if self.stage == 'joint' else self.optimizer_g
            optimizer.zero_grad(set_to_none=True)
            self.output = self.net_g(self.lq, mode='converge')
            l_conv = self.cri_conv(self.output, self.gt)
            l_conv.backward()
            optimizer.step()
            loss_dict['l_conv'] = l_conv.detach()

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ----------------------------------------------------------------------------------------------
    # inference and validation
    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        net.eval()
        bare = self.get_bare_model(net)
        with torch.no_grad():
            self.branches = bare.forward_branches(self.lq)
            self.output, self.weights = bare.fuse(self.branches)
        if net is self.net_g and self.is_train:
            self.set_train_mode()
        if getattr(self, '_branch_stats', None) is not None and hasattr(self, 'gt'):
            self._accumulate_branch_stats()

    def _psnr_opts(self):
        metrics = (self.opt.get('val') or {}).get('metrics') or {}
        for metric_opt in metrics.values():
            if metric_opt.get('type') == 'calculate_psnr':
                return {k: v for k, v in metric_opt.items() if k not in ('type', 'better')}
        return {'crop_border': self.opt.get('scale', 4), 'test_y_channel': True}

    def _accumulate_branch_stats(self):
        opts = self._psnr_opts()
        gt_img = tensor2img([self.gt.detach().cpu()])
        stats = self._branch_stats
        for i, branch in enumerate(self.branches):
            stats[f'psnr_branch{i + 1}'] += calculate_psnr(tensor2img([branch.cpu()]), gt_img, **opts)
        oracle = oracle_fusion(self.branches, self.gt)
        stats['psnr_oracle'] += calculate_psnr(tensor2img([oracle.cpu()]), gt_img, **opts)
        stats['count'] += 1

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        num = self.get_bare_model(self.net_g).num_branches
        self._branch_stats = dict({f'psnr_branch{i + 1}': 0.0 for i in range(num)}, psnr_oracle=0.0, count=0)
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            stats, self._branch_stats = self._branch_stats, None
        if (self.opt.get('val') or {}).get('save_panels'):
            self.save_panels(dataloader, current_iter)
        count = stats.pop('count')
        if count == 0:
            return
        dataset_name = dataloader.dataset.opt['name']
        self.branch_metric_results = {k: v / count for k, v in stats.items()}
        log_str = f'Branches {dataset_name} (PSNR, as the psnr metric)\n'
        for name, value in self.branch_metric_results.items():
            log_str += f'\t # {name}: {value:.4f}\n'
            if tb_logger:
                tb_logger.add_scalar(f'branches/{dataset_name}/{name}', value, current_iter)
        get_root_logger().info(log_str)

    def save_panels(self, dataloader, current_iter):
        """``val: save_panels: true``: a picture per image and the branch / oracle PSNR table, written by
        :func:`d2csr.visualize.save_validation_panels` (its own pass over ``dataloader``)."""
        from d2csr.visualize import save_validation_panels

        save_validation_panels(self, dataloader, current_iter)

    def get_current_visuals(self):
        out_dict = super().get_current_visuals()
        if hasattr(self, 'branches'):
            out_dict['branches'] = [b.detach().cpu() for b in self.branches]
            out_dict['weights'] = self.weights.detach().cpu()
        return out_dict
