"""D2C-SR losses: the divergence loss of the tree (paper eq. 1-7) and the convergence loss (eq. 9).

Shapes: ``branches`` is a list of ``P`` tensors (or one ``(P, N, C, H, W)`` tensor), ``target`` is
``(N, C, H, W)``; ``C`` is 3 (RGB in ``[0, 1]``) for the grey conversions below.
"""
import torch
from torch import nn
from torch.nn import functional as F
from d2csr.utils.registry import LOSS_REGISTRY  # d2csr's names, not BasicSR's table

# alpha: d2csr's measured value (docs/evidence.md, options/train_D2C_div_*.yml); the authors' diver_w, 2e-5, was
# never trained with a gradient and with one changes nothing.
DIVERGENCE_ALPHA = 0.02
AUTHORS_ALPHA = 2e-5
# the authors' margins (root level: cousins, then deeper levels: siblings); every hinge stays on (measured), so
# they change no gradient
DIVERGENCE_MARGINS = (5e-5, 2e-5)

# BT.601 luma coefficients on [0, 1] RGB (BasicSR's rgb2ycbcr without the offset, which G removes anyway).
_Y_COEFFS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)


class DivergenceWeightSchedule:
    """The weight ``alpha`` of the triplet term over BasicSR's training iterations (``current_iter``, from 1).

    Two forms (``alpha_schedule`` in ``divergence_opt``); without either, alpha is constant:

    - **in epochs**, the authors' ``adjust_diver`` iteration for iteration: their loop counts steps from 0
      (``step = current_iter - 1``) and ``epoch = step // iters_per_epoch``; alpha is 0 while
      ``epoch <= start_epoch``, then ``alpha * decay_factor ** (epoch // decay_epochs)`` while
      ``epoch % every_epochs < on_epochs`` and 0 in the rest. Their values (``start_epoch`` 200,
      ``every_epochs`` 1000, ``on_epochs`` 200, ``decay_epochs`` 2000, ``decay_factor`` 0.5) put the first
      window at epochs 1000-1199: ``epoch > 200`` and ``epoch % 1000 < 200`` first hold together at 1000.
      ``iters_per_epoch`` is their ``len(train) // batch`` (459 // 4 = 114 on RealSR x4).
    - **in iterations** (d2csr's own, simpler): alpha is 0 while ``current_iter <= start_iter``; after it,
      ``alpha * decay_factor ** (current_iter // decay_every)`` while ``current_iter % period < on_iters``
      and 0 in the rest.

    Leaving ``every_epochs`` / ``period`` (or ``decay_epochs`` / ``decay_every``) unset keeps alpha on
    (constant) once it has started.
    """

    EPOCH_KEYS = ('iters_per_epoch', 'start_epoch', 'every_epochs', 'on_epochs', 'decay_epochs')
    ITER_KEYS = ('start_iter', 'period', 'on_iters', 'decay_every')

    def __init__(self, alpha, start_iter=0, period=None, on_iters=None, decay_every=None, decay_factor=0.5,
                 iters_per_epoch=None, start_epoch=None, every_epochs=None, on_epochs=None, decay_epochs=None):
        epochs = {k: v for k, v in zip(self.EPOCH_KEYS, (iters_per_epoch, start_epoch, every_epochs, on_epochs,
                                                            decay_epochs)) if v is not None}
        iters = {k: v for k, v in zip(self.ITER_KEYS, (start_iter, period, on_iters, decay_every))
                 if v is not None and not (k == 'start_iter' and v == 0)}
        if epochs and iters:
            raise ValueError(f'alpha_schedule: give the schedule in epochs ({", ".join(self.EPOCH_KEYS)}) or in '
                             f'iterations ({", ".join(self.ITER_KEYS)}), not both; got {sorted(epochs)} and '
                             f'{sorted(iters)}')
        self.by_epoch = bool(epochs)
        if self.by_epoch:
            if iters_per_epoch is None or not (isinstance(iters_per_epoch, int) and iters_per_epoch >= 1):
                raise ValueError('alpha_schedule: a schedule in epochs needs iters_per_epoch, an integer >= 1 (the '
                                 f'authors\' len(train) // batch, e.g. 459 // 4 = 114), got {iters_per_epoch!r}')
            self.unit, start, period, on_iters, decay_every = (iters_per_epoch, start_epoch, every_epochs, on_epochs,
                                                               decay_epochs)
            names = ('every_epochs', 'on_epochs', 'decay_epochs')
        else:
            self.unit = 1
            start = start_iter
            names = ('period', 'on_iters', 'decay_every')
        if period is not None and (on_iters is None or not 0 < on_iters <= period):
            raise ValueError(f'alpha_schedule:{names[1]} must be in (0, {names[0]}={period}], got {on_iters!r}')
        if decay_every is not None and decay_every <= 0:
            raise ValueError(f'alpha_schedule:{names[2]} must be > 0, got {decay_every!r}')
        self.alpha = float(alpha)
        self.start = start
        self.period = period
        self.on = on_iters
        self.decay_every = decay_every
        self.decay_factor = decay_factor

    def __call__(self, current_iter):
        if current_iter is None:
            return self.alpha
        # the authors' epoch of BasicSR's iteration; an iteration-form schedule counts iterations as they come
        t = (current_iter - 1) // self.unit if self.by_epoch else current_iter
        if self.start is not None and t <= self.start:
            return 0.0
        if self.period is not None and t % self.period >= self.on:
            return 0.0
        if self.decay_every is not None:
            return self.alpha * self.decay_factor**(t // self.decay_every)
        return self.alpha


def tree_pair_depths(depth, width):
    """``(P, P)`` long tensor: depth of the common parent of leaves ``i`` and ``j`` (root = 1)."""
    leaves = torch.arange(width**depth)
    common = torch.zeros(len(leaves), len(leaves), dtype=torch.long)
    for level in range(depth):  # level of an ancestor; leaves share it when their prefixes agree
        anc = leaves // width**(depth - level)
        common += (anc[:, None] == anc[None, :]).long()
    return common  # 1 for the root only, up to `depth` for siblings


@LOSS_REGISTRY.register()
class DivergenceLoss(nn.Module):
    """``L_D = sum_i MSE(I_i, HR) + alpha * T_D`` (paper eq. 1, 7), with a triplet term that carries gradient.

    Args:
        alpha (float): weight of the triplet term ``T_D``; default d2csr's measured 0.02 (the authors'
            ``diver_w``, 2e-5, changes nothing once the term has a gradient; see docs/evidence.md).
        margins (float | list[float]): triplet margin per depth of the common parent of two leaves,
            root first (authors, L=2: ``[5e-5, 2e-5]`` for cousins, siblings); one float for all.
        theta (float): ``beta_ij = theta ** (l - 1)``, ``l`` the depth of the common parent (eq. 6).
        gray (str): ``'y'`` (Y channel, paper eq. 2) or ``'mean'`` (channel mean, authors' code).
        norm (str): statistics of ``G``: ``'image'`` (each image's own mean/std, paper) or ``'batch'``
            (the whole batch tensor's, authors' code). The std is the population std.
        depth (int), width (int): the tree's ``L`` and ``C``. In training leave them out of
            ``divergence_opt``: :func:`build_divergence_loss` takes them from ``network_g`` (a value that
            disagrees with the network stops the run at start).
        alpha_schedule (dict, optional): arguments of :class:`DivergenceWeightSchedule`.
        loss_weight (float): scales the whole loss.
    """

    def __init__(self, alpha=DIVERGENCE_ALPHA, margins=DIVERGENCE_MARGINS, theta=0.8, gray='y', norm='image', depth=2,
                 width=2, alpha_schedule=None, loss_weight=1.0, eps=1e-8):
        super().__init__()
        if gray not in ('y', 'mean'):
            raise ValueError(f"DivergenceLoss:gray must be 'y' or 'mean', got {gray!r}")
        if norm not in ('image', 'batch'):
            raise ValueError(f"DivergenceLoss:norm must be 'image' or 'batch', got {norm!r}")
        if isinstance(margins, (int, float)):
            margins = [float(margins)] * depth
        if len(margins) != depth:
            raise ValueError(f'DivergenceLoss:margins needs one value per tree level ({depth}, root first), '
                             f'got {list(margins)}')
        self.gray = gray
        self.norm = norm
        self.depth = depth
        self.width = width
        self.loss_weight = loss_weight
        self.eps = eps
        self.schedule = DivergenceWeightSchedule(alpha, **(alpha_schedule or {}))
        common = tree_pair_depths(depth, width)
        off_diag = ~torch.eye(len(common), dtype=torch.bool)
        margin_of_depth = torch.tensor([0.0] + [float(m) for m in margins])
        self.register_buffer('pair_margin', margin_of_depth[common] * off_diag, persistent=False)
        self.register_buffer('pair_beta', (theta**(common - 1).double()).float() * off_diag, persistent=False)
        # on the loss's device once (``.to(device)``), so that no call copies host data to the device
        self.register_buffer('y_coeffs', torch.tensor(_Y_COEFFS).view(3, 1, 1), persistent=False)

    def normalized_gray(self, img):
        """``G(I)`` of eq. 2: ``(..., C, H, W)`` -> ``(..., 1, H, W)`` with zero mean and unit std."""
        if self.gray == 'y':
            coeffs = self.y_coeffs if self.y_coeffs.device == img.device else self.y_coeffs.to(img.device)
            g = (img * coeffs.to(img.dtype)).sum(dim=-3, keepdim=True)
        else:
            g = img.mean(dim=-3, keepdim=True)
        dims = tuple(range(-3, 0)) if self.norm == 'image' else tuple(range(-4, 0))
        mean = g.mean(dim=dims, keepdim=True)
        std = g.std(dim=dims, keepdim=True, unbiased=False)
        return (g - mean) / (std + self.eps)

    def triplet(self, branches, target):
        """``T_D`` of eq. 5: ``sum_{i != j} beta_ij * trip(res_i, 0, res_j) / (P (P - 1))``.

        With ``d(a, b) = mean((a - b)^2)``, ``d(r_i, 0) - d(r_i, r_j) = 2 <r_i, r_j> / M - d(r_j, 0)``,
        so all pairs come from one Gram matrix of the residual maps.
        """
        stacked = torch.stack(list(branches)) if isinstance(branches, (list, tuple)) else branches
        num = stacked.shape[0]
        if num < 2:
            return stacked.new_zeros(())
        trip = F.relu(self.pair_hinges(stacked, target))
        return (self.pair_beta * trip).sum() / (num * (num - 1))

    def pair_hinges(self, branches, target):
        """``(P, P)``: ``d(res_i, 0) - d(res_i, res_j) + margin_ij``, the argument of pair ``(i, j)``'s hinge
        (anchor ``i``, negative ``j``; eq. 4); the triplet term is its positive part. ``branches``: list of ``P``
        ``(N, C, H, W)`` or one ``(P, N, C, H, W)`` tensor."""
        stacked = torch.stack(list(branches)) if isinstance(branches, (list, tuple)) else branches
        num = stacked.shape[0]
        residuals = (self.normalized_gray(stacked) - self.normalized_gray(target).unsqueeze(0)).abs()
        flat = residuals.reshape(num, -1)
        gram = flat @ flat.t() / flat.shape[1]
        return 2 * gram - gram.diagonal().unsqueeze(0) + self.pair_margin

    def active_share(self, branches, target):
        """Share (0-dim tensor) of the ordered pairs ``i != j`` whose hinge is on (argument > 0): where it is
        off, the pair gives no gradient; while it is 1, the margins change no gradient, only the loss value."""
        hinges = self.pair_hinges(branches, target)
        off_diag = ~torch.eye(hinges.shape[0], dtype=torch.bool, device=hinges.device)
        return (hinges[off_diag] > 0).float().mean()

    def terms(self, branches, target, current_iter=None, alpha=None):
        """Dict of ``l_branch`` (sum of per-branch MSE), ``l_triplet`` (``T_D``), ``alpha`` and ``l_div``.

        ``alpha``: the triplet weight as a 0-dim tensor on the device (:meth:`alpha_tensor`); then the
        triplet term is always computed (times 0 when the schedule is off) and nothing depends on host
        values: no host-device copy, no branch on data, the same kernels every call (what
        ``torch.compile`` and CUDA graphs need). Without it, ``alpha`` comes from the schedule at
        ``current_iter`` (a float) and the triplet term is skipped while it is 0.
        """
        branches = list(branches)
        l_branch = sum(F.mse_loss(b, target) for b in branches)
        if alpha is None:
            alpha = self.schedule(current_iter)
            l_trip = self.triplet(branches, target) if alpha > 0 else target.new_zeros(())
        else:
            l_trip = self.triplet(branches, target)
        total = self.loss_weight * (l_branch + alpha * l_trip)
        return {'l_branch': l_branch, 'l_triplet': l_trip, 'alpha': alpha, 'l_div': total}

    def forward(self, branches, target, current_iter=None):
        return self.terms(branches, target, current_iter)['l_div']

    def alpha_tensor(self, current_iter, out):
        """Write the schedule's alpha at ``current_iter`` into ``out`` (a 0-dim device tensor) and return it.

        Outside the step: a ``fill_`` kernel (its value an argument, no host-device copy), launched only
        when the value changes (``out`` keeps the last value written in ``out._d2c_alpha``).
        """
        value = self.schedule(current_iter)
        if getattr(out, '_d2c_alpha', None) != value:
            out.fill_(value)
            out._d2c_alpha = value
        return out


def build_divergence_loss(loss_opt, net):
    """``train: divergence_opt`` built for the tree of ``net`` (a :class:`~d2csr.archs.D2CSR`).

    The network is the one source of truth for the tree's shape: ``depth`` / ``width`` are filled in from
    ``net`` when absent; a value that differs raises ``ValueError`` naming both, when the run starts rather
    than when alpha first turns on. Returns the loss module (``DivergenceLoss`` or a subclass).
    """
    from basicsr.losses import build_loss

    opt = dict(loss_opt)
    tree = {'depth': net.depth, 'width': net.width}
    wrong = {k: opt[k] for k in tree if k in opt and opt[k] != tree[k]}
    if wrong:
        given = ', '.join(f'{k}: {v}' for k, v in wrong.items())
        has = ', '.join(f'{k}: {v}' for k, v in tree.items())
        raise ValueError(f'train:divergence_opt gives {given}, but network_g is a tree with {has} '
                         f'({net.width ** net.depth} leaves). Remove depth / width from divergence_opt (they '
                         'are taken from network_g) or make them equal.')
    opt.update(tree)
    try:
        return build_loss(opt)
    except ValueError as err:
        raise ValueError(f'train:divergence_opt does not fit network_g (depth {net.depth}, width {net.width}): '
                         f'{err}') from err


@LOSS_REGISTRY.register()
class ConvergenceLoss(nn.Module):
    """L2 between the fused output and HR (paper eq. 9): ``loss_weight * MSE(sr, target)``."""

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, sr, target):
        return self.loss_weight * F.mse_loss(sr, target)
