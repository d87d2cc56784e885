"""The demo and the evidence script pick their device (``--device``, a GPU when there is one) and pass it on
to the ``d2csr/train.py`` / ``test.py`` subprocesses through ``num_gpu`` and ``CUDA_VISIBLE_DEVICES``."""
import subprocess

import pytest
import torch
import yaml

from conftest import load_script
from d2csr.utils import subprocess_device
from d2csr.utils.misc import SubprocessDevice

NO_GPU = not torch.cuda.is_available()


def test_cpu_device_hides_the_gpus_from_the_subprocesses():
    where = subprocess_device('cpu')
    assert where.device == torch.device('cpu') and where.num_gpu == 0
    assert where.env == {'CUDA_VISIBLE_DEVICES': ''}
    assert where.description.startswith('cpu (') and 'thread' in where.description


def test_auto_takes_the_gpu_when_there_is_one():
    where = subprocess_device('auto')
    if NO_GPU:
        assert where.num_gpu == 0 and where.device.type == 'cpu'
    else:
        assert where.num_gpu == 1 and where.device == torch.device('cuda', 0)
        assert where.env['CUDA_VISIBLE_DEVICES'] != '' and torch.cuda.get_device_name(0) in where.description


@pytest.mark.skipif(not NO_GPU, reason='checks the message on a machine without a GPU')
def test_asking_for_a_missing_gpu_is_a_clear_error():
    for name in ('cuda', 'cuda:1'):
        with pytest.raises(SystemExit, match=f'--device {name} asks for a GPU, but none is available'):
            subprocess_device(name)


@pytest.mark.skipif(NO_GPU, reason='needs a GPU')
def test_a_gpu_beyond_the_count_is_named():
    count = torch.cuda.device_count()
    with pytest.raises(SystemExit, match=f'only {count} GPU'):
        subprocess_device(f'cuda:{count}')


def test_demo_puts_the_device_into_its_option_files(tmp_path, monkeypatch):
    """The demo's three runs (stage 1, stage 2, test) get ``num_gpu`` and the environment of its device."""
    monkeypatch.chdir(tmp_path)  # the demo starts afresh: it removes its experiments/ and results/ folders here
    demo = load_script('scripts/demo.py')
    if NO_GPU:
        with pytest.raises(SystemExit, match='none is available'):
            demo.main(['--device', 'cuda'])
    gpu = SubprocessDevice(torch.device('cpu'), 1, {'CUDA_VISIBLE_DEVICES': '3'}, 'cuda:0 (pretend)')
    monkeypatch.setattr(demo, 'subprocess_device', lambda name: gpu)
    monkeypatch.setattr(demo, 'build_photo_pairs', lambda *args, **kwargs: None)
    runs = []

    def fake_run(script, opt, opt_dir, threads, env=None):
        runs.append((script, opt, env))
        if len(runs) == 3:
            raise SystemExit('stop before the evaluation')

    monkeypatch.setattr(demo, 'run', fake_run)
    with pytest.raises(SystemExit, match='stop before'):
        demo.main(['--out', str(tmp_path), '--div-iters', '2', '--conv-iters', '2', '--threads', '1'])
    assert [(script, opt['num_gpu'], env) for script, opt, env in runs] == [
        ('train', 1, gpu.env), ('train', 1, gpu.env), ('test', 1, gpu.env)]
    assert [opt['train']['stage'] for _, opt, _ in runs[:2]] == ['divergence', 'convergence']


def test_evidence_trains_on_the_chosen_device(tmp_path, monkeypatch):
    evidence = load_script('benchmarks/d2c_evidence.py')
    seen = {}

    def fake_run(cmd, env=None, **kwargs):
        seen['opt'] = yaml.safe_load(open(cmd[cmd.index('-opt') + 1]))
        seen['env'] = env
        return subprocess.CompletedProcess(cmd, 0, '', '')

    monkeypatch.setattr(evidence.subprocess, 'run', fake_run)
    opt = evidence.options('e', 'divergence', dict(type='D2CSR', num_feat=8, upscale=4), 1e-5, 4,
                           str(tmp_path))
    monkeypatch.setitem(evidence.RUN_DEVICE, 'num_gpu', 1)
    monkeypatch.setitem(evidence.RUN_DEVICE, 'env', {'CUDA_VISIBLE_DEVICES': '2'})
    evidence.train(opt, str(tmp_path), lambda msg: None)
    assert seen['opt']['num_gpu'] == 1 and seen['env']['CUDA_VISIBLE_DEVICES'] == '2'
    if NO_GPU:
        with pytest.raises(SystemExit, match='none is available'):
            evidence.main(['--device', 'cuda', '--out', str(tmp_path)])
