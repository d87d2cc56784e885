"""How d2csr is wired into BasicSR: a plain ``import d2csr`` leaves BasicSR's functions alone; the training
patches come from one explicit call."""
import json
import subprocess
import sys

from conftest import ROOT, subprocess_env

# (module, attribute) that apply_training_patches replaces
PATCHED = [('basicsr.train', 'load_resume_state'), ('basicsr.train', 'create_train_val_dataloader'),
           ('basicsr.train', 'EnlargedSampler'), ('basicsr.test', 'make_exp_dirs'),
           ('basicsr.utils.dist_util', 'init_dist'), ('basicsr.utils.options', 'init_dist')]

PROBE = r'''
import importlib, json, sys
patched = json.loads(sys.argv[1])
import d2csr  # the plain import under test
mods = [m for m, _ in patched]
def owners():
    return [getattr(importlib.import_module(m), a).__module__ for m, a in patched]
before = owners()
from d2csr.compat import apply_training_patches, training_patches_applied
was = training_patches_applied()
apply_training_patches()
print(json.dumps({'before': before, 'was_applied': was, 'after': owners()}))
'''


def test_plain_import_leaves_basicsr_untouched_and_the_explicit_call_patches():
    proc = subprocess.run([sys.executable, '-c', PROBE, json.dumps(PATCHED)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    # after `import d2csr` every function is BasicSR's own
    for (module, attribute), owner in zip(PATCHED, result['before']):
        assert owner.startswith('basicsr.'), f'{module}.{attribute} is {owner}\'s after a plain import d2csr'
    assert result['was_applied'] is False
    # the explicit call replaces each of them and says so
    assert result['after'] == ['d2csr.compat'] * len(PATCHED)
    assert any('d2csr: BasicSR training patches active' in line for line in lines[:-1])


def test_apply_training_patches_is_idempotent_in_process():
    import basicsr.train

    from d2csr import compat

    compat.apply_training_patches()  # conftest already applied them: nothing changes, nothing printed
    assert compat.training_patches_applied()
    assert basicsr.train.load_resume_state is compat.checked_load_resume_state
    assert basicsr.train.EnlargedSampler is compat.ResumableEnlargedSampler
