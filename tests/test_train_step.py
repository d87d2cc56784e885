"""The training step without host overhead: amp (bf16 / fp16 + scaler), fused / foreach optimizers, the
device-side NaN/Inf guard, capture-safety (no host syncs or host-to-device copies), torch.compile."""
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from test_numerics import batch, make_model, same, weights

DIV_ALPHA_ON = {'train:divergence_opt:alpha_schedule': {'start_iter': 0}}


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logger = logging.getLogger('basicsr')
        self.level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger('basicsr')
        logger.removeHandler(self)
        logger.setLevel(self.level)


class ConvDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.startswith('aten::convolution'):
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def nan_in_one_element(param, value=float('nan')):
    """A hook putting ``value`` into one element of ``param``'s gradient."""
    def hook(grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        grad.view(-1)[grad.numel() // 2] = value
        return grad
    return param.register_hook(hook)


def adam_steps(optimizer):
    return {int(s['step']) for s in optimizer.state.values()}


# --------------------------------------------------------------------------------------------------
# mixed precision
def test_bf16_amp_trains_on_cpu_with_fp32_weights(photo_data, tmp_path):
    ref = make_model(photo_data, tmp_path, **DIV_ALPHA_ON)
    model = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **{'train:amp': 'bf16'})
    assert model.amp_dtype == torch.bfloat16 and model.scaler is None
    before = weights(model)
    for it in (1, 2):
        ref.feed_data(batch())
        ref.optimize_parameters(it)
        model.feed_data(batch())
        with ConvDtypes() as convs:
            model.optimize_parameters(it)
        assert convs.dtypes == {torch.bfloat16}  # every conv, forward and backward, ran in bf16
    after = weights(model)
    assert not same(after, before) and all(v.dtype == torch.float32 for v in after.values())
    log, ref_log = model.get_current_log(), ref.get_current_log()
    assert log['l_branch'] == pytest.approx(ref_log['l_branch'], rel=0.05)
    assert log['l_triplet'] > 0
    model.save(0, 2)
    saved = torch.load(tmp_path / 'models' / 'net_g_2.pth', weights_only=True)['params']
    assert all(v.dtype == torch.float32 for v in saved.values())


def test_fp16_scaler_skips_overflow_without_error_and_resumes_its_state(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path, **{'train:amp': 'fp16'})
    assert isinstance(model.scaler, torch.amp.GradScaler) and model.scaler.is_enabled()
    scale = model.scaler.get_scale()
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert model.scaler.get_scale() == scale
    before = weights(model)
    head = model.get_bare_model(model.net_g).head.weight
    handle = nan_in_one_element(head, float('inf'))  # like an fp16 overflow of the scaled gradients
    model.feed_data(batch())
    model.optimize_parameters(2)  # nan_policy stop: a scaler-skipped step is not an error
    handle.remove()
    assert same(weights(model), before)  # skipped by the scaler
    log = model.get_current_log()
    assert 'nan_skips' not in log and log['loss_scale'] == scale / 2
    model.save(0, 2)
    state = torch.load(tmp_path / 'training_states' / '2.state', weights_only=True)
    assert state['scaler']['scale'] == scale / 2 and state['nan_skips'] == 0
    resumed = make_model(photo_data, tmp_path, **{'train:amp': 'fp16'})
    resumed.resume_training(state)
    assert resumed.scaler.get_scale() == scale / 2
    assert resumed.scaler.state_dict() == model.scaler.state_dict()


def test_fp16_nan_loss_is_still_an_error(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path, **{'train:amp': 'fp16', 'train:optim_g:fused': True})
    before = weights(model)
    model.feed_data(batch(bad=float('nan')))
    model.optimize_parameters(1)
    with pytest.raises(FloatingPointError, match=r'non-finite loss at iteration 1 \(stage divergence\): l_branch=nan'):
        model.get_current_log()
    assert same(weights(model), before)


def test_bad_amp_and_compile_values_are_refused(photo_data, tmp_path):
    with pytest.raises(ValueError, match=r"train:amp must be one of bf16, fp16 or ~ \(fp32\), got 'fp8'"):
        make_model(photo_data, tmp_path, **{'train:amp': 'fp8'})
    with pytest.raises(ValueError, match=r"train:compile must be one of .*'reduce-overhead'.*, got 'fast'"):
        make_model(photo_data, tmp_path, **{'train:compile': 'fast'})
    with pytest.raises(ValueError, match=r"train:optim_g Adam with \{'fused': True, 'foreach': True\} was refused"):
        make_model(photo_data, tmp_path, **{'train:optim_g:fused': True, 'train:optim_g:foreach': True})


# --------------------------------------------------------------------------------------------------
# optimizers and the guard
@pytest.mark.parametrize('flag', ['fused', 'foreach'])
def test_fused_and_foreach_optimizers_from_options(photo_data, tmp_path, flag):
    ref = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **{'train:optim_g:foreach': False})
    model = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **{f'train:optim_g:{flag}': True})
    assert model.optimizer_g.param_groups[0][flag] is True
    for it in (1, 2):
        for m in (ref, model):
            m.feed_data(batch())
            m.optimize_parameters(it)
    a, b = weights(ref), weights(model)
    assert not same(a, weights(make_model(photo_data, tmp_path)))  # they trained
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    assert adam_steps(model.optimizer_g) == {2}


def test_fused_guard_stops_on_one_nan_gradient_element_without_a_sync(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path, **{'train:optim_g:fused': True})
    model.feed_data(batch())
    model.optimize_parameters(1)
    before = weights(model)
    adam_before = adam_steps(model.optimizer_g)
    handle = nan_in_one_element(model.get_bare_model(model.net_g).head.weight)
    model.feed_data(batch())
    model.optimize_parameters(2)  # no sync: the error waits for the log line
    handle.remove()
    model.feed_data(batch())
    model.optimize_parameters(3)  # a good step after a stop is masked too
    assert same(weights(model), before) and adam_steps(model.optimizer_g) == adam_before
    with pytest.raises(FloatingPointError,
                       match=r'non-finite gradient at iteration 2 \(stage divergence\): l_branch=0\.\d+.*'
                             r'Found at iteration 3; the optimizer skipped every step from iteration 2 on'):
        model.get_current_log()
    assert model.guard.halted.item()  # later steps stay masked


def test_sync_guard_catches_one_nan_gradient_element(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path)
    before = weights(model)
    handle = nan_in_one_element(model.get_bare_model(model.net_g).head.weight)
    model.feed_data(batch())
    with pytest.raises(FloatingPointError, match=r'non-finite gradient at iteration 4 \(stage divergence\)'):
        model.optimize_parameters(4)
    handle.remove()
    assert same(weights(model), before)


def test_fused_skip_policy_counts_skips_at_the_log_line(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path, stage='convergence',
                       **{'train:nan_policy': 'skip', 'train:optim_g:fused': True})
    before = weights(model)
    model.feed_data(batch(bad=float('inf')))
    model.optimize_parameters(1)
    assert same(weights(model), before)
    model.feed_data(batch())
    model.optimize_parameters(2)
    assert not same(weights(model), before) and adam_steps(model.optimizer_g) == {1}
    with LogLines() as lines:
        log = model.get_current_log()
    assert log['nan_skips'] == 1 and log['l_conv'] > 0
    assert any('non-finite loss and gradient at iteration 1 (stage convergence): l_conv=nan' in line and
               'Step skipped' in line for line in lines.lines)
    assert model.get_current_log()['nan_skips'] == 1  # counted once


# --------------------------------------------------------------------------------------------------
# capture-safety
class HostTraffic(TorchDispatchMode):
    """Records ops that read a device value on the host (``.item()``, ``bool()``) or make a tensor from host
    data (``torch.tensor(...)``, which on a GPU is a host-to-device copy), and copies between devices."""

    SYNC = ('aten::_local_scalar_dense', 'aten::is_nonzero', 'aten::equal')
    HOST_DATA = ('aten::lift_fresh', 'aten::lift_fresh_copy', 'aten::lift')

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in self.SYNC or name in self.HOST_DATA:
            self.found.append(name)
        if name in ('aten::_to_copy', 'aten::copy_') and args:
            src = args[1] if name == 'aten::copy_' else args[0]
            dst = kwargs.get('device', args[0].device if name == 'aten::copy_' else src.device)
            if torch.is_tensor(src) and torch.device(dst) != src.device:
                self.found.append(f'{name} {src.device}->{dst}')
        return func(*args, **kwargs)


def host_traffic_of_steps(model, iters, monkeypatch):
    calls = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, 'tolist', lambda self: calls.append('tolist') or real_tolist(self))
    with HostTraffic() as mode:
        for it in iters:
            model.feed_data(batch())  # the data loader's copy comes before the step
            model.optimize_parameters(it)
    monkeypatch.undo()
    return mode.found + calls


@pytest.mark.parametrize('stage', ['divergence', 'convergence', 'joint'])
def test_step_does_no_host_sync_or_host_to_device_copy(photo_data, tmp_path, monkeypatch, stage):
    """The step (forward, losses with alpha switching on and off, guard, fused Adam) under a dispatch-mode
    check; the same check finds the per-step sync of the guard with a non-fused optimizer."""
    schedule = {'train:divergence_opt:alpha_schedule': {'start_iter': 1, 'period': 4, 'on_iters': 2}} \
        if stage != 'convergence' else {}  # a stage's options only: others are refused at start
    fused_c = {'train:optim_c': {'type': 'Adam', 'lr': 1e-4, 'fused': True}} if stage == 'joint' else {}
    model = make_model(photo_data, tmp_path, stage=stage, **schedule, **fused_c, **{'train:optim_g:fused': True})
    model.feed_data(batch())
    model.optimize_parameters(1)  # first step: optimizer state, device iteration
    assert host_traffic_of_steps(model, (2, 3, 4, 5), monkeypatch) == []
    assert model.get_current_log()['l_' + ('conv' if stage != 'divergence' else 'branch')] > 0

    plain = make_model(photo_data, tmp_path, stage=stage, **schedule)
    plain.feed_data(batch())
    plain.optimize_parameters(1)
    assert 'aten::_local_scalar_dense' in host_traffic_of_steps(plain, (2, ), monkeypatch) or \
        'tolist' in host_traffic_of_steps(plain, (3, ), monkeypatch)


def test_alpha_is_a_device_scalar_written_only_when_it_changes(photo_data, tmp_path):
    model = make_model(photo_data, tmp_path, **{'train:divergence_opt:alpha_schedule':
                                                {'start_iter': 2, 'period': 10, 'on_iters': 5}})
    seen = []
    for it in (1, 2, 3, 4, 11, 16):
        model.feed_data(batch())
        model.optimize_parameters(it)
        seen.append(model.log_dict['alpha'].item())
    assert seen == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert model.log_dict['alpha'] is model._alpha


# --------------------------------------------------------------------------------------------------
# torch.compile
def test_compile_failure_falls_back_to_eager_with_a_log_line(photo_data, tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError('no compiler here\nmore detail')
        return compiled

    monkeypatch.setattr(torch, 'compile', broken_compile)
    ref = make_model(photo_data, tmp_path)
    with LogLines() as lines:
        model = make_model(photo_data, tmp_path, **{'train:compile': 'reduce-overhead'})
        for m in (ref, model):
            m.feed_data(batch())
            m.optimize_parameters(1)
    assert any("train:compile: compiling the divergence step failed (RuntimeError: no compiler here); running it "
               "eager." in line for line in lines.lines)
    assert any("'reduce-overhead' captures CUDA graphs on GPUs only" in line for line in lines.lines)
    assert same(weights(model), weights(ref))


def test_compiled_step_matches_eager(photo_data, tmp_path):
    """Dynamo + AOT autograd through the whole forward and loss (``aot_eager``: no C++ build, quick on CPU)."""
    torch._dynamo.reset()
    ref = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **{'train:optim_g:fused': True})
    model = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **{'train:optim_g:fused': True, 'train:compile': 'default',
                                                                'train:compile_backend': 'aot_eager'})
    with LogLines() as lines:
        for it in (1, 2):
            for m in (ref, model):
                m.feed_data(batch())
                m.optimize_parameters(it)
    assert not any('running it eager' in line for line in lines.lines)
    assert model._compiled_ok == {'divergence': True}
    a, b = weights(ref), weights(model)
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert model.get_current_log()['l_branch'] == pytest.approx(ref.get_current_log()['l_branch'], rel=1e-5)


# --------------------------------------------------------------------------------------------------
# GPU (skipped without one)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def to_cuda(batch_):
    return {k: v.cuda() for k, v in batch_.items()}


@cuda
@pytest.mark.parametrize('amp, compile_mode', [(None, None), ('bf16', None), ('fp16', None),
                                               ('bf16', 'reduce-overhead')])
def test_cuda_step_amp_and_compile(photo_data, tmp_path, amp, compile_mode):
    torch._dynamo.reset()
    over = {'train:amp': amp, 'train:compile': compile_mode, 'train:optim_g:fused': True, 'num_gpu': 1}
    model = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **over)
    assert model.device.type == 'cuda'
    before = weights(model)
    for it in range(1, 6):
        model.feed_data(to_cuda(batch()))
        model.optimize_parameters(it)
    log = model.get_current_log()
    assert log['l_branch'] > 0 and 'nan_skips' not in log
    assert not same(weights(model), before)
    assert all(v.dtype == torch.float32 for v in weights(model).values())
    if compile_mode:
        assert model._compiled_ok == {'divergence': True}  # compiled, no fallback to eager


@cuda
def test_cuda_fp16_resume_restores_the_scaler(photo_data, tmp_path):
    over = {'train:amp': 'fp16', 'train:optim_g:fused': True, 'num_gpu': 1}
    model = make_model(photo_data, tmp_path, **over)
    for it in (1, 2, 3):
        model.feed_data(to_cuda(batch()))
        model.optimize_parameters(it)
    model.scaler.update(1234.0)
    model.save(0, 3)
    state = torch.load(tmp_path / 'training_states' / '3.state', weights_only=True)
    resumed = make_model(photo_data, tmp_path, **over)
    resumed.resume_training(state)
    assert resumed.scaler.get_scale() == 1234.0


@cuda
def test_cuda_step_is_capture_safe(photo_data, tmp_path):
    """On a GPU the dispatch check sees real device copies: none inside the step."""
    model = make_model(photo_data, tmp_path, **DIV_ALPHA_ON, **{'train:optim_g:fused': True, 'num_gpu': 1})
    data = to_cuda(batch())
    model.feed_data(data)
    model.optimize_parameters(1)
    with HostTraffic() as mode:
        model.feed_data(data)
        model.optimize_parameters(2)
    assert mode.found == []


# --------------------------------------------------------------------------------------------------
# the benchmark's training-step rows
def test_benchmark_step_rows_from_the_option_files(capsys):
    from conftest import load_script

    bench = load_script('benchmarks/bench_d2c.py')
    res = bench.main(['--smoke', '--steps', 'only', '--train-dtype', 'fp32,bf16', '--profile-steps', '1'])
    out = capsys.readouterr().out
    assert 'D2CModel.optimize_parameters from options/train_D2C_div_x4.yml' in out
    steps = res['steps']
    assert set(steps['rows']) == {f'{kind}_{dtype}' for kind in ('divergence', 'divergence_log_line', 'convergence',
                                                                 'hand_written') for dtype in ('fp32', 'bf16')}
    assert set(steps['limits_gflops']) == {'fp32', 'bf16'} and min(steps['limits_gflops'].values()) > 0
    for name, row in steps['rows'].items():
        assert row['dtype'] == name.rsplit('_', 1)[1] and (row['batch'], row['patch']) == (2, 8)
        assert row['wall_ms'] > 0 and row['launches_per_step'] > 10 and row['gflop_per_step'] > 0
        assert row['kernel_ms'] is None and row['gpu_busy'] is None  # CPU: no kernel timeline
        assert row['of_limit'] == pytest.approx(row['gflops'] / steps['limits_gflops'][row['dtype']])
        assert row['paper_x4_hours'] == pytest.approx(row['wall_ms'] / 1e3 * 2.28e6 / 3600)  # 20000 x (459 // 4)
    # the stage-1 step trains the tree (more FLOPs than the convergence step, whose tree is frozen)
    assert steps['rows']['divergence_fp32']['gflop_per_step'] > steps['rows']['convergence_fp32']['gflop_per_step']
    # at a log line the step also computes trip_grad_ratio (one forward, two backward passes more)
    line, plain = steps['rows']['divergence_log_line_fp32'], steps['rows']['divergence_fp32']
    assert line['gflop_per_step'] > 1.5 * plain['gflop_per_step']
    assert line['grad_ratio_ms'] == pytest.approx(line['wall_ms'] - plain['wall_ms'])
    assert 'the trip_grad_ratio pass adds' in out
