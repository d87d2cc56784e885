"""The two-stage D2C-SR model (paper Sec. 3.4): train the divergence tree, then the convergence net.

One ``network_g`` (:class:`d2csr.archs.D2CSR`) holds both parts, so one ``net_g_*.pth`` carries both.
``train: stage`` picks what a run trains:

- ``divergence``: the tree, with :class:`~d2csr.losses.DivergenceLoss` (``train: divergence_opt``);
  the convergence net gets no gradient and is not in the optimizer;
- ``convergence``: the convergence net, with ``train: convergence_opt``; the tree comes from
  ``path: pretrain_network_g`` (stage 1) and is frozen: no gradients, eval mode, not in the optimizer;
- ``joint``: both at every step, as the authors' code does (``optim_g`` for the tree, ``optim_c``
  for the convergence net, which defaults to ``optim_g``'s settings).

``train: perceptual_opt`` (optional, the paper's perceptual variant, Table 2) adds BasicSR's VGG
``PerceptualLoss`` (:mod:`d2csr.losses.perceptual`) to every branch in the divergence stage and to the fused
output in the convergence stage (both in ``joint``), logged as ``l_percep`` / ``l_style``.

Training is guarded and resumable: a NaN/Inf loss or gradient stops the run before the optimizer step
(``train: nan_policy: stop``, the default) or skips the step and counts it (``nan_policy: skip``);
checkpoints and training states are written atomically and the training state also holds every process's
RNG states, so that a resumed CPU run is bit-identical to an uninterrupted one (:mod:`d2csr.utils.checkpoint`,
:mod:`d2csr.pipeline`). Under ``--launcher`` only what the stage trains is synchronised by
``DistributedDataParallel``: parameters frozen by the stage are frozen before wrapping.

The step (``optimize_parameters``) runs without host overhead (:mod:`d2csr.models.train_step`):
``train: amp: bf16 | fp16`` (autocast; fp16 with a ``GradScaler`` kept in the training state), the NaN/Inf
guard as one fused check on the device (with ``optim_g: fused: true`` no host sync per step: the decision
is read at log lines, checkpoints and validation), loss values kept on the device until
:meth:`D2CModel.get_current_log`, and ``train: compile: <mode>`` (``torch.compile`` of forward + losses,
falling back to eager with a log line).

Validation reports BasicSR's metrics on the fused output (while training stage 1, whose convergence net is
untrained, on the mean of the branches, logged as ``psnr_mean_of_branches`` etc.) and also logs each branch's
PSNR and the PSNR of the oracle fusion (per pixel, the branch closest to HR: the paper's upper bound, Sec. 4.6).
With ``train: ema_decay > 0`` validation scores ``net_g_ema``, which averages only what the stage trains; stage 2
starts from the stage-1 weights that stage 1's validation scored (``params_ema`` when it had EMA). At log lines the
divergence stage also logs ``trip_grad_ratio`` = |grad(alpha T_D)| / |grad(L2)| and ``trip_active``
(``train: log_grad_ratio``). ``val: amp:
bf16 | fp16 | ~`` runs validation and ``d2csr/test.py`` under ``torch.autocast`` (weights stay fp32).
``val: tile`` tests large images (DRealSR's) whole within memory: ``auto`` (default) runs an image untiled when
that surely fits in the memory available and in exact tiles (:func:`d2csr.tiling.tiled_forward`, tiles of 128 LR
pixels) otherwise; ``N`` always tiles (N LR pixels), ``0`` never. Tiled equals untiled up to float rounding, so
the metrics are the same.
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
from d2csr.utils.registry import MODEL_REGISTRY  # d2csr's names, not BasicSR's table

from d2csr.utils.checkpoint import capture_rng_state, load_network_checked, restore_rng_state, save_with_retry
from d2csr.losses.d2csr_losses import build_divergence_loss
from d2csr.losses.perceptual import build_perceptual_loss, perceptual_terms
from d2csr.models.train_step import StepGuard, takes_found_inf
from d2csr.options_check import validate_options
from d2csr.memory import bytes_per_pixel, surely_fits
from d2csr.tiling import tiled_forward
from d2csr.utils.precision import amp_dtype, autocast
from d2csr.utils import set_tf32
from d2csr.utils.errors import TrainingStopped
from d2csr.convert import check_channel_order
from d2csr.evaluation import fusion_metrics, mean_fusion, weight_mad
from d2csr.metrics.paper_metrics import float_outputs, float_outputs_for_metrics

STAGES = ('divergence', 'convergence', 'joint')
MEAN_SUFFIX = '_mean_of_branches'  # stage 1's validation metrics: they score the mean of the branches
NAN_POLICIES = ('stop', 'skip')
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def _plain(value):
    """Options (``OrderedDict`` from BasicSR's YAML loader) as plain dicts / lists, for ``weights_only`` files."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def val_tile_option(value):
    """``val: tile``: ``'auto'`` or an integer >= 0 (``ValueError`` naming the option otherwise)."""
    if value is None or value == 'auto':
        return 'auto'
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'val:tile must be auto, 0 (never tile) or a tile size in LR pixels, got {value!r}')
    return value


@MODEL_REGISTRY.register()
class D2CModel(SRModel):
    """Divergence / convergence / joint training of a :class:`~d2csr.archs.D2CSR` ``network_g``."""

    def __init__(self, opt):
        validate_options(opt)
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
        self._set_stage2_param_key(opt)
        if opt.get('tf32') is not None:  # top-level option; false: full fp32 convolutions on the GPU
            set_tf32(opt['tf32'])
        self.val_amp = amp_dtype((opt.get('val') or {}).get('amp'), 'val:amp')
        self.val_tile = val_tile_option((opt.get('val') or {}).get('tile', 'auto'))
        self._whole_per_pixel = None  # bytes per LR pixel of the untiled forward (val: tile: auto), when needed
        super().__init__(opt)

    @staticmethod
    def _set_stage2_param_key(opt):
        """Stage 2 starts from the stage-1 weights that stage 1's validation scored: ``params_ema`` when stage 1
        ran with ``ema_decay > 0`` (BasicSR validates ``net_g_ema`` then), else ``params`` (the loader falls back
        to it). Applies to ``stage: convergence`` starting from ``pretrain_network_g`` without ``param_key_g``;
        a resumed run loads its own ``params`` (BasicSR's ``check_resume``)."""
        path = opt.get('path') or {}
        if (opt.get('is_train') and (opt.get('train') or {}).get('stage') == 'convergence'
                and path.get('pretrain_network_g') and not path.get('resume_state') and 'param_key_g' not in path):
            path['param_key_g'] = 'params_ema'

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's ``load_network`` (pretrain, test and resume loads) with the checks of
        :func:`d2csr.utils.checkpoint.load_network_checked`: weights-only, finite, shapes before loading; the
        authors' BGR weights from an older converter are refused with the command that converts them again."""
        check_channel_order(load_path)
        bare = self.get_bare_model(net)
        adopt = getattr(bare, 'adopt_legacy_no_skip', None)  # D2CSR: d2csr's former deep_residual: false
        load_network_checked(bare, load_path, strict, param_key, get_root_logger(),
                             prepare=(lambda state: adopt(state.keys())) if adopt else None)

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

        self._setup_ema(train_opt)
        self.log_grad_ratio = train_opt.get('log_grad_ratio', True)

        self.cri_div = self.cri_conv = None
        if self.stage in ('divergence', 'joint'):
            if not train_opt.get('divergence_opt'):
                raise ValueError(f'train:divergence_opt is required for stage {self.stage!r}')
            self.cri_div = build_divergence_loss(train_opt['divergence_opt'], net).to(self.device)
        if self.stage in ('convergence', 'joint'):
            if not train_opt.get('convergence_opt'):
                raise ValueError(f'train:convergence_opt is required for stage {self.stage!r}')
            self.cri_conv = build_loss(train_opt['convergence_opt']).to(self.device)
        percep_opt = train_opt.get('perceptual_opt')
        self.cri_perceptual = build_perceptual_loss(percep_opt).to(self.device) if percep_opt else None

        self.setup_optimizers(trained)
        self.setup_schedulers()
        self._setup_fast_step(train_opt)

    def _setup_ema(self, train_opt):
        """``train: ema_decay > 0``: ``net_g_ema``, the copy that validation scores and that checkpoints save as
        ``params_ema`` (what ``d2csr/test.py``'s option files and the inference scripts load).

        It starts as a copy of ``net_g``, the weights this run starts from (stage 2: the stage-1 tree it froze);
        a resumed run reloads its own ``params_ema``. :meth:`model_ema` blends only the parameters the stage
        trains; the frozen ones are ``net_g``'s, bit for bit, so that both copies hold the same tree in stage 2.
        """
        self.ema_decay = train_opt.get('ema_decay', 0)
        if self.ema_decay <= 0:
            return
        get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay} (only what stage '
                               f'"{self.stage}" trains is averaged)')
        net = self.get_bare_model(self.net_g)
        self.net_g_ema = build_network(self.opt['network_g']).to(self.device)
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None and self.opt['path'].get('resume_state'):
            self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            with torch.no_grad():  # the frozen part is net_g's (older runs let the EMA drift there)
                ema = dict(self.net_g_ema.named_parameters())
                for name, p in net.named_parameters():
                    if not p.requires_grad:
                        ema[name].copy_(p)
        else:
            self.net_g_ema.load_state_dict(net.state_dict())
        for p in self.net_g_ema.parameters():
            p.requires_grad_(False)
        self.net_g_ema.eval()
        pairs = [(dict(self.net_g_ema.named_parameters())[n], p) for n, p in net.named_parameters() if p.requires_grad]
        self._ema_pairs = ([e for e, _ in pairs], [p for _, p in pairs])

    @torch.no_grad()
    def model_ema(self, decay=0.999):
        """BasicSR's EMA update (``ema = decay * ema + (1 - decay) * param``) on the parameters this stage trains
        only (BasicSR's blends every parameter, also a frozen tree, which then drifts by rounding)."""
        ema, params = self._ema_pairs
        if ema:
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, params, alpha=1 - decay)

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
    def _setup_fast_step(self, train_opt):
        """``train: amp`` / ``compile`` / ``compile_backend`` and the device-side NaN guard (see
        :mod:`d2csr.models.train_step`)."""
        logger = get_root_logger()
        self.amp_dtype = amp_dtype(train_opt.get('amp'), 'train:amp')
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        if self.amp_dtype is not None:
            logger.info(f'train:amp: forward under torch.autocast({self.device.type!r}, {self.amp_dtype}); losses, '
                        'weights, gradients and checkpoints in fp32' +
                        ('; fp16 gradient scaler (its state is saved in the training state)' if self.scaler else ''))
        self.guard = StepGuard(self.device, self.nan_policy, distributed=self.opt['dist'], handler=self._on_bad_steps)
        self.guard.reported_skips = getattr(self, '_nan_skips', 0)
        self._alpha = torch.zeros((), device=self.device)
        self._step_fns = {'divergence': self._divergence_losses, 'convergence': self._convergence_losses}
        self._compiled_ok = {}
        self._mark_cudagraph_step = False
        mode = train_opt.get('compile')
        if mode:
            if mode is True:
                mode = 'default'
            if mode not in COMPILE_MODES:
                raise ValueError(f'train:compile must be one of {COMPILE_MODES} or ~ (eager), got {mode!r}')
            backend = train_opt.get('compile_backend', 'inductor')
            kwargs = dict(backend=backend, dynamic=False)
            if backend == 'inductor':
                kwargs['mode'] = mode
            elif mode != 'default':
                logger.warning(f'train:compile: mode {mode!r} applies to the inductor backend only; '
                               f'compile_backend {backend!r} ignores it.')
            if 'cudagraphs' not in mode and mode in ('reduce-overhead', 'max-autotune'):
                if self.device.type != 'cuda':
                    logger.info(f'train:compile: {mode!r} captures CUDA graphs on GPUs only; on {self.device.type} '
                                'it compiles without them.')
                else:
                    self._mark_cudagraph_step = True
            self._step_fns = {k: torch.compile(fn, **kwargs) for k, fn in self._step_fns.items()}
            logger.info(f'train:compile: forward + losses compiled with torch.compile({kwargs}) for fixed-shape '
                        'batches (a new shape recompiles); if compiling fails, the step runs eager (logged).')
        for optimizer in self.optimizers:
            if takes_found_inf(optimizer):
                logger.info('NaN/Inf guard: one fused check per step on the device, the fused optimizer skips a bad '
                            'step itself; the decision is read at log lines and checkpoints (no host sync per step).')
            else:
                logger.info('NaN/Inf guard: one fused check per step, read by the host before each optimizer step '
                            '(set optim_g: fused: true to avoid this sync).')

    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _divergence_losses(self, lq, gt, alpha):
        """Forward (under autocast) and the divergence loss (fp32), plus ``perceptual_opt``'s terms on every
        branch: ``(loss, stack(l_branch, l_triplet, l_div, *perceptual terms))``."""
        with self._autocast():
            branches = self.net_g(lq, mode='branches')
        branches = [b.float() for b in branches]
        terms = self.cri_div.terms(branches, gt, alpha=alpha)
        percep = list(self._perceptual_terms(branches, gt).values())
        loss = terms['l_div'] + sum(percep) if percep else terms['l_div']
        return loss, torch.stack([terms['l_branch'], terms['l_triplet'], terms['l_div'], *percep]).detach()

    def _convergence_losses(self, lq, gt):
        """Forward (under autocast) and the convergence loss (fp32), plus ``perceptual_opt``'s terms on the
        fused output: ``(loss, stack(l_conv, *perceptual terms))``."""
        with self._autocast():
            output = self.net_g(lq, mode='converge')
        output = output.float()
        l_conv = self.cri_conv(output, gt)
        percep = list(self._perceptual_terms([output], gt, self._fused_suffix()).values())
        loss = l_conv + sum(percep) if percep else l_conv
        return loss, torch.stack([l_conv, *percep]).detach()

    def _forward_backward(self, site, optimizer, *args):
        """The stage's compiled (or eager) forward + loss, then backward; falls back to eager (logged) when
        compiling fails on the first call."""
        fn = self._step_fns[site]
        try:
            loss, values = fn(*args)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        except Exception as error:  # noqa: BLE001  (any compiler failure: fall back, the eager step re-raises)
            eager = self._divergence_losses if site == 'divergence' else self._convergence_losses
            if fn is eager or self._compiled_ok.get(site):
                raise
            first_line = (str(error).strip().splitlines() or [''])[0][:300]
            get_root_logger().warning(f'train:compile: compiling the {site} step failed ({type(error).__name__}: '
                                      f'{first_line}); running it eager.')
            self._step_fns[site] = eager
            optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(site, optimizer, *args)
        self._compiled_ok[site] = True
        if self._mark_cudagraph_step:  # CUDA-graph outputs are overwritten by the next replay: keep a copy
            values = values.clone()
        return values

    def optimize_parameters(self, current_iter):
        """One step per trained part: forward + loss (autocast, maybe compiled), backward (scaled in fp16), the
        device-side NaN/Inf guard and the optimizer step. Loss values stay on the device in ``log_dict``."""
        self.guard.begin(current_iter)
        if self._mark_cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        log = OrderedDict()
        if self.stage in ('divergence', 'joint'):
            alpha = self.cri_div.alpha_tensor(current_iter, self._alpha)
            probe = self._triplet_gradient_ratio(current_iter, alpha)  # at log lines: before the step, same batch
            self.optimizer_g.zero_grad(set_to_none=True)
            values = self._forward_backward('divergence', self.optimizer_g, self.lq, self.gt, alpha)
            names = ('l_branch', 'l_triplet', 'l_div', *self._perceptual_names())
            self.guard.step(self.optimizer_g, names, values, self.scaler, sync=not takes_found_inf(self.optimizer_g))
            log['l_branch'], log['l_triplet'] = values[0], values[1]
            log.update(zip(names[3:], values[3:]))
            log['alpha'] = alpha
            log.update(probe)
        if self.stage in ('convergence', 'joint'):
            optimizer = self.optimizer_c if self.stage == 'joint' else self.optimizer_g
            optimizer.zero_grad(set_to_none=True)
            values = self._forward_backward('convergence', optimizer, self.lq, self.gt)
            names = ('l_conv', *self._perceptual_names(self._fused_suffix()))
            self.guard.step(optimizer, names, values, self.scaler, sync=not takes_found_inf(optimizer))
            log.update(zip(names, values))
        if self.scaler is not None:  # once per iteration, after every optimizer's step (PyTorch's recipe)
            self.scaler.update()
        self.log_dict = log
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _triplet_gradient_ratio(self, current_iter, alpha):
        """How much the divergence term acts, logged beside the losses at BasicSR's log lines (``logger:
        print_freq``) while ``train: log_grad_ratio`` is on (default); other iterations cost nothing.

        Returns ``{'trip_grad_ratio': |grad(alpha * T_D)| / |grad(L2)|, 'trip_active': share of the pairs whose
        triplet hinge is on}`` as 0-dim device tensors (``{}`` at other iterations): gradient norms over the
        tree parameters this stage trains, for this batch and these weights (before the step). ``L2`` is the
        branches' MSE sum (eq. 1). A ratio of 1e-4 means the term changes nothing; ``trip_active`` 1 means the
        margins change no gradient. Computed by a separate eager forward of the bare network and two
        ``autograd.grad`` calls (about two steps' work once per ``print_freq``); the step itself is untouched.
        """
        freq = (self.opt.get('logger') or {}).get('print_freq')
        if not self.log_grad_ratio or not freq or current_iter % freq:
            return {}
        if self.cri_div.schedule(current_iter) == 0:
            return {'trip_grad_ratio': torch.zeros((), device=self.device)}
        net = self.get_bare_model(self.net_g)
        params = [p for p in net.divergence_parameters() if p.requires_grad]
        with self._autocast():
            branches = net(self.lq, mode='branches')
        branches = [b.float() for b in branches]
        terms = self.cri_div.terms(branches, self.gt, alpha=alpha)
        scale = self.scaler.get_scale() if self.scaler is not None else 1.0  # keeps fp16 gradients from underflowing
        g_l2 = torch.autograd.grad(terms['l_branch'] * scale, params, retain_graph=True, allow_unused=True)
        g_trip = torch.autograd.grad(terms['l_triplet'] * (alpha * scale), params, allow_unused=True)

        def norm(grads):
            grads = [g for g in grads if g is not None]
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else \
                torch.zeros((), device=self.device)

        with torch.no_grad():
            ratio = norm(g_trip) / norm(g_l2).clamp_min(torch.finfo(torch.float32).tiny)
            active = self.cri_div.active_share([b.detach() for b in branches], self.gt)
        return {'trip_grad_ratio': ratio, 'trip_active': active}

    def _fused_suffix(self):
        """In ``joint`` the fused output's perceptual terms are logged apart from the branches' (``_fused``)."""
        return '_fused' if self.stage == 'joint' else ''

    def _perceptual_names(self, suffix=''):
        """Names of ``perceptual_opt``'s terms, in the order :meth:`_perceptual_terms` gives them."""
        if self.cri_perceptual is None:
            return ()
        return tuple(k + suffix for k, w in (('l_percep', self.cri_perceptual.perceptual_weight),
                                              ('l_style', self.cri_perceptual.style_weight)) if w > 0)

    def _perceptual_terms(self, outputs, gt, suffix=''):
        """``train: perceptual_opt``'s terms for ``outputs`` (list of ``(N, 3, H, W)``, summed over the list, as
        the branches' MSE terms are): ``{'l_percep' + suffix: ..., 'l_style' + suffix: ...}`` (those set), ``{}``
        without ``perceptual_opt``."""
        if self.cri_perceptual is None:
            return {}
        return {k + suffix: v for k, v in perceptual_terms(self.cri_perceptual, outputs, gt).items()}

    @property
    def nan_skips(self):
        """Steps skipped (or stopped at) for NaN/Inf, as of the last sync point (log line, checkpoint)."""
        guard = getattr(self, 'guard', None)
        return guard.reported_skips if guard is not None else getattr(self, '_nan_skips', 0)

    @nan_skips.setter
    def nan_skips(self, value):
        self._nan_skips = value
        if getattr(self, 'guard', None) is not None:
            self.guard.reported_skips = value

    def check_numerics(self):
        """Sync point of the NaN/Inf guard: raises ``TrainingStopped`` (``stop``) or logs (``skip``)."""
        if self.is_train and getattr(self, 'guard', None) is not None:
            self.guard.report()

    def _on_bad_steps(self, count, first_iter, flags, values, ranks=None):
        """Called by the guard when it finds bad steps: ``nan_policy: stop`` raises, ``skip`` warns.

        ``train: nan_policy: stop`` (default) raises ``TrainingStopped`` (a ``FloatingPointError``) naming the
        iteration and the loss terms; the optimizer did not step there (nor after it), so the weights and the last
        saved checkpoint stay as they were; ``skip`` counts the step (``nan_skips`` in the log) and goes on. Distributed,
        ``ranks`` (``{rank: (flags, values)}``) gives every process's flags and loss values: the message names
        the processes where the loss or gradient was not finite and shows their values, not rank 0's.
        """
        what = ' and '.join(w for w, bad in (('loss', flags[0]), ('gradient', flags[1])) if bad)
        if ranks:
            def text_of(rank):
                return ', '.join(f'{k}={v:.6g}' for k, v in ranks[rank][1].items())
            # a NaN loss on one process makes every process's gradient NaN (DDP averages them): name the origin
            bad = [r for r, (f, _) in sorted(ranks.items()) if f[0]] or \
                [r for r, (f, _) in sorted(ranks.items()) if f[1]]
            where = f' on rank{"s" if len(bad) > 1 else ""} {", ".join(map(str, bad))} of {len(ranks)}'
            text = '; '.join(f'rank {r}: ' + text_of(r) for r in bad) or text_of(0)
            good = [r for r in sorted(ranks) if r not in bad]
            if good:
                text += f' (finite on rank{"s" if len(good) > 1 else ""} {", ".join(map(str, good))})'
        else:
            where, text = '', ', '.join(f'{k}={v:.6g}' for k, v in values.items())
        message = f'non-finite {what}{where} at iteration {first_iter} (stage {self.stage}): {text}.'
        logger = get_root_logger()
        if self.nan_policy == 'skip':
            more = f' ({count} bad steps since the last check)' if count > 1 else ''
            logger.warning(f'{message} Step skipped (train:nan_policy: skip){more}; {self.nan_skips} skipped so far.')
            return
        now = self.guard._next_iter - 1 if self.guard._next_iter else first_iter
        if now != first_iter:  # found at a later sync point (fused optimizer: no host sync per step)
            message += (f' Found at iteration {now}; the optimizer skipped every step from iteration {first_iter} '
                        'on.')
        message += (' Training stopped before the optimizer step: the weights were not updated and the last '
                    f'saved checkpoint in {self.opt["path"].get("models", "experiments/<name>/models")} is intact. '
                    'Lower the learning rate or check the data, then resume with --auto_resume; or set '
                    'train:nan_policy: skip to skip such steps.')
        logger.error(message)
        raise TrainingStopped(message)

    def get_current_log(self):
        """The loss values (device tensors until now: one host copy here, at BasicSR's ``print_freq``), averaged
        over processes, plus ``nan_skips`` and the fp16 ``loss_scale``. Also the guard's sync point."""
        self.check_numerics()
        log = OrderedDict()
        items = [(k, v) for k, v in self.log_dict.items() if torch.is_tensor(v)]
        if items:
            stacked = torch.stack([v.detach().float().reshape(()) for _, v in items])
            if self.opt['dist']:
                dist.all_reduce(stacked)
                stacked /= self.opt['world_size']
            log.update(zip((k for k, _ in items), stacked.tolist()))
        log.update((k, v) for k, v in self.log_dict.items() if not torch.is_tensor(v))
        if self.nan_skips:
            log['nan_skips'] = self.nan_skips
        if getattr(self, 'scaler', None) is not None:
            log['loss_scale'] = self.scaler.get_scale()
        return log

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """BasicSR's optimizers; ``fused: true`` / ``foreach: true`` pass to PyTorch (a clear error if refused)."""
        try:
            return super().get_optimizer(optim_type, params, lr, **kwargs)
        except (TypeError, RuntimeError, ValueError) as error:
            flags = {k: kwargs[k] for k in ('fused', 'foreach', 'capturable') if k in kwargs}
            if not flags:
                raise
            raise ValueError(f'train:optim_g {optim_type} with {flags} was refused by PyTorch: {error}. Use fused '
                             'with Adam, AdamW or SGD (torch >= 2.4 on CPU), and fused or foreach, '
                             'not both.') from error

    def save(self, epoch, current_iter):
        self.check_numerics()  # a stop found here raises before anything is written
        super().save(epoch, current_iter)

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
        if getattr(self, 'scaler', None) is not None:
            state['scaler'] = self.scaler.state_dict()
        save_with_retry(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'),
                        get_root_logger())

    def resume_training(self, resume_state):
        """Reload optimizers, schedulers and the skipped-step count.

        The RNG states and the data position are restored by the training loop's sampler when the next
        batch is drawn (:class:`d2csr.pipeline.ResumableEnlargedSampler`).
        """
        for kind, saved, current in (('optimizers', resume_state['optimizers'], self.optimizers),
                                     ('schedulers', resume_state['schedulers'], self.schedulers)):
            if len(saved) != len(current):
                raise ValueError(f'resume state has {len(saved)} {kind} but this run has {len(current)}: it '
                                 f'comes from another train:stage (this one is {self.stage!r}).')
        super().resume_training(resume_state)
        self.nan_skips = resume_state.get('nan_skips', 0)
        if getattr(self, 'scaler', None) is not None:
            if resume_state.get('scaler'):
                self.scaler.load_state_dict(resume_state['scaler'])
            else:
                get_root_logger().warning('train:amp: fp16 but the resume state has no gradient-scaler state '
                                          '(written without fp16): the scaler starts afresh.')
        get_root_logger().info(f'Resumed from training state {self.opt["path"].get("resume_state")} (iteration '
                               f'{resume_state["iter"]}) with network {self.opt["path"].get("pretrain_network_g")}.')

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's validation, leaving the training RNG streams as they were.

        Iterating a DataLoader draws from torch's global RNG; restoring it afterwards keeps training
        independent of ``val_freq`` and lets a resumed run (which does not repeat the validation of the
        iteration it resumes from) be bit-identical to an uninterrupted one.
        """
        self.check_numerics()
        rng = capture_rng_state()
        try:
            super().validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            restore_rng_state(rng)

    # ----------------------------------------------------------------------------------------------
    # inference and validation
    def validation_tile(self, bare):
        """LR pixels per tile for ``self.lq`` (``0``: untiled), from ``val: tile``; ``auto``: untiled when the
        plain forward surely fits in the memory available (:func:`d2csr.memory.surely_fits`), else 128."""
        if self.val_tile != 'auto':
            return self.val_tile
        if self._whole_per_pixel is None:
            self._whole_per_pixel = bytes_per_pixel(bare, self.val_amp)
        h, w = self.lq.shape[-2:]
        return 0 if surely_fits(self._whole_per_pixel * self.lq.shape[0], h, w, bare.upscale, self.lq.device) else 128

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        net.eval()
        bare = self.get_bare_model(net)
        tile = self.validation_tile(bare)
        with torch.no_grad(), autocast(self.lq.device, self.val_amp):  # val: amp (outputs come back fp32)
            if tile:  # exact tiles: the same outputs up to float rounding, in bounded memory
                out = tiled_forward(bare, self.lq, tile=tile, return_branches=True, return_weights=True)
                self.branches, self.output, self.weights = out.branches, out.sr, out.weights
            else:
                self.branches = bare.forward_branches(self.lq)
                self.output, self.weights = bare.fuse(self.branches)
        scored = mean_fusion(self.branches) if getattr(self, '_score_mean', False) else self.output  # as the 8-bit
        self.metric_floats = float_outputs(self.opt, scored, getattr(self, 'gt', None))  # the paper's metrics
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

    def scores_mean_of_branches(self):
        """Whether validation's metrics score the mean of the branches instead of the fused output: while training
        stage 1 (``stage: divergence``), which trains the branches and leaves the convergence net untrained.
        The metrics are then logged as ``<name>_mean_of_branches`` (``psnr_mean_of_branches``, with BasicSR's
        "Best" tracking), and ``save_img`` saves that image."""
        return bool(self.is_train and getattr(self, 'stage', None) == 'divergence')

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """BasicSR's validation (metrics on the fused output; in stage 1 on the mean of the branches, see
        :meth:`scores_mean_of_branches`), then a log of the other rows, averaged over the images:
        ``psnr_bicubic``, ``psnr_branch1..P``, ``psnr_mean`` (mean of the branches), ``psnr_fused``,
        ``psnr_oracle`` and ``weight_mad`` (mean ``|W - 1/P|`` of the convergence weights; 0: the fused output is
        the mean)."""
        self._branch_stats = dict(weight_mad=0.0, count=0)
        from d2csr.data.eval_check import check_eval_dataset

        check_eval_dataset(dataloader.dataset, self.opt.get('scale', 4))  # before the network runs
        metrics = (self.opt.get('val') or {}).get('metrics')
        self._score_mean = bool(metrics) and self.scores_mean_of_branches()
        if self._score_mean:  # BasicSR's loop, metrics and best-metric tracking, under names that say what they score
            self.opt['val']['metrics'] = OrderedDict((k + MEAN_SUFFIX, v) for k, v in metrics.items())
        try:
            with float_outputs_for_metrics(self):  # the paper's PSNR / SSIM on the float output, as the authors'
                super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            stats, self._branch_stats = self._branch_stats, None
            self.metric_floats = None
            if self._score_mean:
                self.opt['val']['metrics'] = metrics
            self._score_mean = False
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
        if getattr(self, '_score_mean', False):  # stage-1 validation scores (and saves) the mean of the branches
            out_dict['result'] = mean_fusion(self.branches).detach().cpu()
        if hasattr(self, 'branches'):
            out_dict['branches'] = [b.detach().cpu() for b in self.branches]
            out_dict['weights'] = self.weights.detach().cpu()
        return out_dict
