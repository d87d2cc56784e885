"""The two-stage D2C-SR model (paper Sec. 3.4): train the divergence tree, then the convergence net.

One ``network_g`` (:class:`d2csr.archs.D2CSR`) holds both parts, so one ``net_g_*.pth`` carries both.
``train: stage`` picks what a run trains:

- ``divergence``: the tree, with :class:`~d2csr.losses.DivergenceLoss` (``train: divergence_opt``);
  the convergence net gets no gradient and is not in the optimizer;
- ``convergence``: the convergence net, with ``train: convergence_opt``; the tree comes from
  ``path: pretrain_network_g`` (stage 1) and is frozen: no gradients, eval mode, not in the optimizer;
- ``joint``: both at every step, as the authors' code does (``optim_g`` for the tree, ``optim_c``
  for the convergence net, which defaults to ``optim_g``'s settings).

Training is guarded and resumable: a NaN/Inf loss or gradient stops the run before the optimizer step
(``train: nan_policy: stop``, the default) or skips the step and counts it (``nan_policy: skip``);
checkpoints and training states are written atomically and the training state also holds every process's
RNG states, so that a resumed CPU run is bit-identical to an uninterrupted one (:mod:`d2csr.checkpoint`,
:mod:`d2csr.compat`). Under ``--launcher`` only what the stage trains is synchronised by
``DistributedDataParallel``: parameters frozen by the stage are frozen before wrapping.

Validation reports BasicSR's metrics on the fused output and also logs each branch's PSNR and the PSNR of
the oracle fusion (per pixel, the branch closest to HR: the paper's upper bound, Sec. 4.6).
"""
import hashlib
import os.path as osp
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from d2csr.checkpoint import capture_rng_state, restore_rng_state, save_with_retry
from d2csr.evaluation import fusion_metrics, oracle_fusion, weight_mad  # noqa: F401  (oracle_fusion: old import path)

STAGES = ('divergence', 'convergence', 'joint')
NAN_POLICIES = ('stop', 'skip')


def _plain(value):
    """Options (``OrderedDict`` from BasicSR's YAML loader) as plain dicts / lists, for ``weights_only`` files."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
    @staticmethod
    def _split_parameters(net, stage):
        """``(trained, frozen)`` parameter lists of a bare :class:`~d2csr.archs.D2CSR` for ``stage``."""
        if stage == 'divergence':
            return net.divergence_parameters(), net.convergence_parameters()
        if stage == 'convergence':
            return net.convergence_parameters(), net.divergence_parameters()
        return list(net.parameters()), []

    def model_to_device(self, net):
        """Move ``net`` to the device; under ``--launcher`` wrap it in DistributedDataParallel.

        Unlike BasicSR's version, the parameters the stage does not train are frozen *before* wrapping,
        so DDP synchronises exactly the trained ones: every branch of the tree in the divergence stage,
        only the convergence net in the convergence stage (the frozen tree is not synchronised, and DDP
        would refuse a wrapper with nothing to train). The joint stage runs two forward passes per
        iteration that each use one part, hence ``find_unused_parameters``. On CPU (gloo) no device ids.
        """
        net = net.to(self.device)
        stage = self.opt['train'].get('stage') if self.is_train else None
        if stage is not None:
            for p in self._split_parameters(net, stage)[1]:
                p.requires_grad_(False)
        if self.opt['dist']:
            if not any(p.requires_grad for p in net.parameters()):
                return net  # nothing to synchronise
            if self.device.type == 'cpu' and dist.get_backend() == 'nccl':
                raise ValueError('num_gpu: 0 under --launcher on a machine with GPUs: the process group uses '
                                 'NCCL, which cannot synchronise CPU tensors. Set num_gpu >= 1, or hide the '
                                 'GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU with gloo.')
            find_unused = self.opt.get('find_unused_parameters', stage == 'joint')
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
        elif self.opt['num_gpu'] > 1:
            net = DataParallel(net)
        return net

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.stage = train_opt['stage']
        self.nan_policy = train_opt.get('nan_policy', 'stop')
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f'train:nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}')
        self.nan_skips = 0
        net = self.get_bare_model(self.net_g)
        trained, frozen = self._split_parameters(net, self.stage)
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
            losses = {k: terms[k].detach() for k in ('l_branch', 'l_triplet', 'l_div')}
            self._guarded_step(self.optimizer_g, current_iter, losses)
            loss_dict['l_branch'] = losses['l_branch']
            loss_dict['l_triplet'] = losses['l_triplet']
            loss_dict['alpha'] = torch.tensor(terms['alpha'], device=self.device)
            del branches, terms
        if self.stage in ('convergence', 'joint'):
            optimizer = self.optimizer_c if self.stage == 'joint' else self.optimizer_g
            optimizer.zero_grad(set_to_none=True)
            self.output = self.net_g(self.lq, mode='converge')
            l_conv = self.cri_conv(self.output, self.gt)
            l_conv.backward()
            loss_dict['l_conv'] = l_conv.detach()
            self._guarded_step(optimizer, current_iter, {'l_conv': loss_dict['l_conv']})

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.nan_skips:
            self.log_dict['nan_skips'] = self.nan_skips
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _guarded_step(self, optimizer, current_iter, losses):
        """``optimizer.step()`` unless a loss term or a gradient is NaN/Inf (on any process).

        ``train: nan_policy: stop`` (default) raises ``FloatingPointError`` before the step, naming the
        iteration and the loss terms, so the weights and the last saved checkpoint stay as they were;
        ``skip`` drops the step's gradients, counts it (``nan_skips`` in the log) and goes on.
        """
        params = [p for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
        bad_loss = torch.stack([~torch.isfinite(v).all() for v in losses.values()]).any()
        bad_grad = torch.stack([~torch.isfinite(p.grad).all() for p in params]).any() if params \
            else torch.zeros((), dtype=torch.bool, device=self.device)
        flags = torch.stack([bad_loss, bad_grad]).to(self.device, torch.float32)
        if self.opt['dist']:  # every process takes the same decision
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad_loss, bad_grad = (bool(v) for v in flags.tolist())
        if not (bad_loss or bad_grad):
            optimizer.step()
            return
        optimizer.zero_grad(set_to_none=True)
        values = ', '.join(f'{k}={v.item():.6g}' for k, v in losses.items())
        what = ' and '.join(w for w, bad in (('loss', bad_loss), ('gradient', bad_grad)) if bad)
        where = '' if not self.opt['dist'] else ' (on at least one process)'
        message = f'non-finite {what}{where} at iteration {current_iter} (stage {self.stage}): {values}.'
        logger = get_root_logger()
        if self.nan_policy == 'skip':
            self.nan_skips += 1
            logger.warning(f'{message} Step skipped (train:nan_policy: skip); {self.nan_skips} skipped so far.')
            return
        message += (' Training stopped before the optimizer step: the weights were not updated and the last '
                    f'saved checkpoint in {self.opt["path"].get("models", "experiments/<name>/models")} is intact. '
                    'Lower the learning rate or check the data, then resume with --auto_resume; or set '
                    'train:nan_policy: skip to skip such steps.')
        logger.error(message)
        raise FloatingPointError(message)

    # ----------------------------------------------------------------------------------------------
    # crash-safe saving and exact resume
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's ``save_network`` (rank 0 only, same file layout), written atomically."""
        if self.opt.get('rank', 0) != 0:
            return
        label = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError('save_network: one param_key per network is needed')
        save_dict = {}
        for net_, key in zip(nets, keys):
            state_dict = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict(
                (k[len('module.'):] if k.startswith('module.') else k, v.detach().cpu()) for k, v in state_dict.items())
        save_with_retry(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'),
                        get_root_logger())

    def save_training_state(self, epoch, current_iter):
        """BasicSR's training state plus what exact resume needs, written atomically by rank 0.

        Adds the RNG states of every process (``rng``, indexed by rank; gathered from all processes, so
        every process must call this, as BasicSR's ``save`` does), ``world_size``, ``stage`` and
        ``network_g`` (checked before resuming) and ``nan_skips``. Written after the network, so a state
        on disk implies its ``net_g_<iter>.pth`` is complete.
        """
        if current_iter == -1:
            return
        rng = capture_rng_state()
        if self.opt['dist']:
            gathered = [None] * self.opt['world_size']
            dist.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if self.opt.get('rank', 0) != 0:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'rng': rng,
            'world_size': self.opt['world_size'],
            'stage': self.stage,
            'network_g': _plain(self.opt['network_g']),
            'nan_skips': getattr(self, 'nan_skips', 0),
        }
        save_with_retry(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'),
                        get_root_logger())

    def resume_training(self, resume_state):
        """Reload optimizers, schedulers and the skipped-step count.

        The RNG states and the data position are restored by the training loop's sampler when the next
        batch is drawn (:class:`d2csr.compat.ResumableEnlargedSampler`).
        """
        for kind, saved, current in (('optimizers', resume_state['optimizers'], self.optimizers),
                                     ('schedulers', resume_state['schedulers'], self.schedulers)):
            if len(saved) != len(current):
                raise ValueError(f'resume state has {len(saved)} {kind} but this run has {len(current)}: it '
                                 f'comes from another train:stage (this one is {self.stage!r}).')
        super().resume_training(resume_state)
        self.nan_skips = resume_state.get('nan_skips', 0)
        get_root_logger().info(f'Resumed from training state {self.opt["path"].get("resume_state")} (iteration '
                               f'{resume_state["iter"]}) with network {self.opt["path"].get("pretrain_network_g")}.')

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's validation, leaving the training RNG streams as they were.

        Iterating a DataLoader draws from torch's global RNG; restoring it afterwards keeps training
        independent of ``val_freq`` and lets a resumed run (which does not repeat the validation of the
        iteration it resumes from) be bit-identical to an uninterrupted one.
        """
        rng = capture_rng_state()
        try:
            super().validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            restore_rng_state(rng)

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
        """Add this image's rows of :func:`d2csr.evaluation.fusion_metrics` (as the ``psnr`` metric computes
        PSNR) and the weights' deviation from uniform to the running sums of the validation."""
        metric = self._psnr_opts()  # BasicSR's calculate_psnr defaults: no border given is an error, RGB
        opts = dict(crop_border=metric.get('crop_border', 0), test_y_channel=metric.get('test_y_channel', False))
        # the bicubic row depends only on the image pair: computed once per LR image (MATLAB imresize is slow)
        cache = self.__dict__.setdefault('_bicubic_psnr_cache', {})
        key = (hashlib.blake2b(self.lq.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest(),
               tuple(self.gt.shape), tuple(sorted(opts.items())))
        rows = fusion_metrics(self.branches, self.output, self.gt, self.opt.get('scale', 4),
                              lq=None if key in cache else self.lq, bicubic=cache.get(key), **opts)
        cache[key] = rows['bicubic']['psnr']
        stats = self._branch_stats
        for row, values in rows.items():
            stats[f'psnr_{row}'] = stats.get(f'psnr_{row}', 0.0) + values['psnr']
        stats['weight_mad'] += weight_mad(self.weights)
        stats['count'] += 1

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's validation (metrics on the fused output), then a log of the other rows, averaged over
        the images: ``psnr_bicubic``, ``psnr_branch1..P``, ``psnr_mean`` (mean of the branches), ``psnr_oracle``
        and ``weight_mad`` (mean ``|W - 1/P|`` of the convergence weights; 0: the fused output is the mean)."""
        self._branch_stats = dict(weight_mad=0.0, count=0)
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
        stats['weight_mad'] = stats.pop('weight_mad')  # last, after the PSNR rows
        self.branch_metric_results = {k: v / count for k, v in stats.items()}
        log_str = (f'Branches {dataset_name} (PSNR as the psnr metric; bicubic: MATLAB imresize; mean: mean of '
                   'the branches; weight_mad: mean |W - 1/P| of the convergence weights)\n')
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
