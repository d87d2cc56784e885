"""Stage logic of D2CModel: EMA averages only what a stage trains, stage 2 starts from (and keeps) the stage-1
tree that stage 1 validated, one fp16 scaler update per iteration in the joint stage, the divergence term's
gradient ratio at log lines, and the former ``deep_residual: false`` checkpoints still load."""
import pytest
import torch
from basicsr.archs import build_network
from basicsr.models import build_model

from conftest import TINY_NET, tiny_options
from test_numerics import batch

MICRO = dict(TINY_NET, num_feat=8, fusion_feat=8)


def build(photo_data, tmp_path, stage='divergence', pretrain=None, resume=False, network=MICRO, **overrides):
    """A D2CModel built in this process as BasicSR's train pipeline builds it (``resume``: as a resumed run)."""
    opt = tiny_options(photo_data, 'stage_logic', stage=stage, network=network, pretrain=pretrain, **overrides)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    for key in ('models', 'training_states'):
        (tmp_path / key).mkdir(exist_ok=True)
        opt['path'][key] = str(tmp_path / key)
    if resume:
        (tmp_path / 'training_states' / '6.state').write_bytes(b'')  # only its name is read at model build
        opt['path']['resume_state'] = str(tmp_path / 'training_states' / '6.state')
    for dataset in opt['datasets'].values():
        dataset['scale'] = opt['scale']
    torch.manual_seed(0)
    return build_model(opt)


def stage1_checkpoint(path, seeds=(1, 2)):
    """A stage-1 checkpoint as BasicSR saves it with EMA: ``params`` and ``params_ema`` with different trees."""
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        nets.append(build_network(dict(MICRO)).state_dict())
    torch.save({'params': nets[0], 'params_ema': nets[1]}, path)
    return nets


def tree(state):
    return {k: v for k, v in state.items() if not k.startswith('fusion.')}


def fusion(state):
    return {k: v for k, v in state.items() if k.startswith('fusion.')}


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def states(model):
    return model.get_bare_model(model.net_g).state_dict(), model.net_g_ema.state_dict()


def run(model, iters, start=1):
    for it in range(start, start + iters):
        model.feed_data(batch())
        model.optimize_parameters(it)


def test_stage2_starts_from_the_validated_tree_and_its_ema_keeps_that_tree(photo_data, tmp_path):
    """Stage 1 ran with EMA, so its validation scored ``params_ema``: stage 2 freezes that tree, and its own EMA
    (0.9, 6 iterations) averages the convergence net only: both copies hold the tree bit for bit."""
    params, params_ema = stage1_checkpoint(tmp_path / 'stage1.pth')
    model = build(photo_data, tmp_path, 'convergence', str(tmp_path / 'stage1.pth'), **{'train:ema_decay': 0.9})
    assert model.opt['path']['param_key_g'] == 'params_ema'
    start, _ = states(model)
    assert equal(tree(start), tree(params_ema)) and not equal(tree(start), tree(params))
    start = {k: v.clone() for k, v in start.items()}
    run(model, 6)
    net, ema = states(model)
    assert equal(tree(net), tree(params_ema)) and equal(tree(ema), tree(params_ema))
    assert not equal(fusion(net), fusion(start)) and not equal(fusion(ema), fusion(net))  # trained, averaged
    # told which weights to start from, it starts there, and the EMA copy starts as that copy
    model = build(photo_data, tmp_path, 'convergence', str(tmp_path / 'stage1.pth'),
                  **{'train:ema_decay': 0.9, 'path:param_key_g': 'params'})
    net, ema = states(model)
    assert equal(net, ema) and equal(tree(net), tree(params))


def test_stage1_ema_leaves_the_untrained_convergence_net_as_it_is(photo_data, tmp_path):
    model = build(photo_data, tmp_path, **{'train:ema_decay': 0.9})
    start, _ = states(model)
    start = {k: v.clone() for k, v in start.items()}
    run(model, 4)
    net, ema = states(model)
    assert equal(fusion(ema), fusion(start)) and equal(fusion(net), fusion(start))
    assert not equal(tree(ema), tree(net)) and not equal(tree(ema), tree(start))


def test_resumed_stage2_reloads_its_ema_with_the_frozen_tree_of_net_g(photo_data, tmp_path):
    """A resumed run reloads its ``params`` into net_g and ``params_ema`` into the EMA copy; a frozen tree that an
    older version let drift in ``params_ema`` is replaced by net_g's."""
    params, params_ema = stage1_checkpoint(tmp_path / 'net_g_6.pth')
    model = build(photo_data, tmp_path, 'convergence', str(tmp_path / 'net_g_6.pth'), resume=True,
                  **{'train:ema_decay': 0.9})
    assert 'param_key_g' not in model.opt['path']  # BasicSR's default, params
    net, ema = states(model)
    assert equal(net, params)
    assert equal(tree(ema), tree(params)) and equal(fusion(ema), fusion(params_ema))


def test_joint_fp16_updates_the_gradient_scaler_once_per_iteration(photo_data, tmp_path):
    """PyTorch's recipe with two optimizers: one ``scaler.update()`` after both steps. Three good iterations
    count three towards growth; one overflow in both parts halves the scale once."""
    model = build(photo_data, tmp_path, 'joint', **{'train:amp': 'fp16', 'train:optim_g:fused': True})
    scale = model.scaler.get_scale()
    run(model, 3)
    assert model.scaler._get_growth_tracker() == 3 and model.scaler.get_scale() == scale
    net = model.get_bare_model(model.net_g)
    hooks = [p.register_hook(lambda g: torch.full_like(g, float('inf')))
             for p in (net.head.weight, net.fusion.fusion[0].weight)]
    run(model, 1, start=4)
    for h in hooks:
        h.remove()
    assert model.scaler.get_scale() == scale / 2 and model.scaler._get_growth_tracker() == 0
    assert model.get_current_log()['loss_scale'] == scale / 2


def test_gradient_ratio_is_logged_at_log_lines_only_and_is_the_gradients_ratio(photo_data, tmp_path):
    """``trip_grad_ratio`` = |grad(alpha T_D)| / |grad(L2)| over the trained tree parameters, before the step, on
    the step's batch; computed (one more forward) only at iterations that BasicSR logs; off with
    ``train: log_grad_ratio: false``."""
    alpha = 0.05
    model = build(photo_data, tmp_path, **{'logger:print_freq': 3, 'train:divergence_opt:alpha': alpha})
    net = model.get_bare_model(model.net_g)
    calls = []
    net.head.register_forward_hook(lambda *args: calls.append(1))
    run(model, 2)
    assert len(calls) == 2 and 'trip_grad_ratio' not in model.log_dict
    reference = build_network(dict(MICRO))
    reference.load_state_dict(net.state_dict())
    model.feed_data(batch())
    model.optimize_parameters(3)
    assert len(calls) == 4
    terms = model.cri_div.terms(reference(model.lq, mode='branches'), model.gt, alpha=alpha)
    params = reference.divergence_parameters()
    g_l2 = torch.autograd.grad(terms['l_branch'], params, retain_graph=True)
    g_trip = torch.autograd.grad(alpha * terms['l_triplet'], params)
    norm = lambda gs: torch.sqrt(sum((g.double()**2).sum() for g in gs))  # noqa: E731
    log = model.get_current_log()
    assert log['trip_grad_ratio'] == pytest.approx((norm(g_trip) / norm(g_l2)).item(), rel=1e-4)
    assert 0 < log['trip_grad_ratio'] and log['trip_active'] == 1.0
    quiet = build(photo_data, tmp_path, **{'logger:print_freq': 1, 'train:log_grad_ratio': False})
    run(quiet, 1)
    assert 'trip_grad_ratio' not in quiet.get_current_log()


def test_a_checkpoint_of_the_former_deep_residual_false_trains_stage2_as_no_skip(photo_data, tmp_path):
    """Weights of d2csr's former ``deep_residual: false`` (no res_convs) under options saying ``false``: the model
    loads them as ``'no_skip'`` (what they were trained as) and stage 2 runs."""
    torch.manual_seed(3)
    legacy = build_network(dict(MICRO, deep_residual='no_skip')).state_dict()
    torch.save({'params': legacy}, tmp_path / 'legacy.pth')
    with pytest.warns(UserWarning, match='no_skip'):
        model = build(photo_data, tmp_path, 'convergence', str(tmp_path / 'legacy.pth'),
                      network=dict(MICRO, deep_residual=False))
    net = model.get_bare_model(model.net_g)
    assert net.deep_residual == 'no_skip' and equal(tree(net.state_dict()), tree(legacy))
    run(model, 2)
    assert equal(tree(net.state_dict()), tree(legacy))
