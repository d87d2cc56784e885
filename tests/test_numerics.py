"""Guarded numerics: a NaN/Inf loss or gradient stops training at its step (default) or is skipped and counted."""
import hashlib

import pytest
import torch
from basicsr.archs import build_network
from basicsr.models import build_model

from conftest import TINY_NET, experiment_dir, run_entry, tiny_options, unique_name, write_options

MICRO_NET = dict(TINY_NET, num_feat=8, fusion_feat=8)


def make_model(photo_data, tmp_path, stage='divergence', **overrides):
    """A D2CModel built in this process, as BasicSR's train pipeline builds it (no launcher)."""
    pretrain = None
    if stage == 'convergence':
        torch.manual_seed(1)
        pretrain = tmp_path / 'stage1.pth'
        torch.save({'params': build_network(dict(MICRO_NET)).state_dict()}, pretrain)
        pretrain = str(pretrain)
    opt = tiny_options(photo_data, 'numerics', stage=stage, network=MICRO_NET, pretrain=pretrain, **overrides)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    for key in ('models', 'training_states'):
        (tmp_path / key).mkdir(exist_ok=True)
        opt['path'][key] = str(tmp_path / key)
    for dataset in opt['datasets'].values():
        dataset['scale'] = opt['scale']
    torch.manual_seed(0)
    return build_model(opt)


def batch(bad=None):
    g = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    if bad is not None:
        lq[1, 0, 3, 4] = bad
    return {'lq': lq, 'gt': gt}


def weights(model):
    return {k: v.clone() for k, v in model.get_bare_model(model.net_g).state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def files(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_nan_loss_stops_before_the_step_and_leaves_checkpoints_intact(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path)
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(0, 1)
    saved, before = files(tmp_path), weights(model)
    adam_before = {k: v.clone() for k, v in model.optimizer_g.state[model.optimizer_g.param_groups[0]['params'][0]]
                   .items()}
    model.feed_data(batch(bad=float('nan')))
    with pytest.raises(FloatingPointError) as info:
        model.optimize_parameters(2)
    message = str(info.value)
    assert 'non-finite loss and gradient at iteration 2 (stage divergence)' in message
    assert 'l_branch=nan' in message and 'l_triplet=' in message and 'nan_policy: skip' in message
    assert same(weights(model), before)  # the optimizer did not step
    adam_after = model.optimizer_g.state[model.optimizer_g.param_groups[0]['params'][0]]
    assert all(torch.equal(adam_before[k], adam_after[k]) for k in adam_before)
    assert files(tmp_path) == saved


def test_inf_gradient_with_a_finite_loss_is_caught(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path)
    head = model.get_bare_model(model.net_g).head.weight
    head.register_hook(lambda grad: torch.full_like(grad, float('inf')))
    model.feed_data(batch())
    with pytest.raises(FloatingPointError, match=r'non-finite gradient at iteration 5 \(stage divergence\): '
                                                 r'l_branch=0\.\d+'):
        model.optimize_parameters(5)


def test_skip_policy_skips_counts_and_resumes_the_count(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path, stage='convergence', **{'train:nan_policy': 'skip'})
    before = weights(model)
    model.feed_data(batch(bad=float('inf')))
    model.optimize_parameters(1)
    assert same(weights(model), before)
    assert model.get_current_log()['nan_skips'] == 1
    model.feed_data(batch())
    model.optimize_parameters(2)
    after = weights(model)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith('fusion.') for k in changed)
    assert model.get_current_log()['nan_skips'] == 1 and model.get_current_log()['l_conv'] > 0
    model.save(0, 2)
    state = torch.load(tmp_path / 'training_states' / '2.state', weights_only=True)
    assert state['nan_skips'] == 1
    resumed = make_model(photo_data, tmp_path, stage='convergence', **{'train:nan_policy': 'skip'})
    resumed.resume_training(state)
    assert resumed.nan_skips == 1


def test_unknown_nan_policy_is_refused(photo_data, tmp_path):
    with pytest.raises(ValueError, match="train:nan_policy must be one of stop, skip, got 'ignore'"):
        make_model(photo_data, tmp_path, **{'train:nan_policy': 'ignore'})


@pytest.mark.parametrize('fused', [False, True], ids=['sync_guard', 'fused_adam'])
def test_diverging_training_stops_at_the_bad_iteration(photo_data, tmp_path, fused):
    """Through the entry point: a learning rate of 1e30 makes iteration 2 non-finite. With fused Adam there is
    no host sync per step (log lines every 3), so the bad step is found when iteration 2's checkpoint is about
    to be written: nothing of it is written either way."""
    name = unique_name('nan_stop_fused' if fused else 'nan_stop')
    extra = {'train:optim_g:fused': True, 'logger:print_freq': 3} if fused else {}
    opt = tiny_options(photo_data, name, network=MICRO_NET,
                       **{'train:optim_g:lr': 1e30, 'datasets:train:gt_size': 32, 'logger:save_checkpoint_freq': 1},
                       **extra)
    proc = run_entry('train', '-opt', write_options(opt, tmp_path / 'nan.yml'), check=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr  # a message, not a crash
    assert 'error: non-finite loss and gradient at iteration 2 (stage divergence): l_branch=nan' in proc.stderr
    assert 'resume with --auto_resume' in proc.stderr
    models = experiment_dir(name) / 'models'
    assert sorted(p.name for p in models.iterdir()) == ['net_g_1.pth']
    assert sorted(p.name for p in (experiment_dir(name) / 'training_states').iterdir()) == ['1.state']
    params = torch.load(models / 'net_g_1.pth', weights_only=True)['params']
    assert all(torch.isfinite(v).all() for v in params.values())
    log = next(experiment_dir(name).glob('train_*.log')).read_text()
    assert 'non-finite loss and gradient at iteration 2' in log
