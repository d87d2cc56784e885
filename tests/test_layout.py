"""How d2csr is wired into BasicSR: a plain ``import d2csr`` makes BasicSR importable on current torchvision and
registers D2C, but leaves BasicSR's functions alone; d2csr's changes for D2C runs come from one explicit call."""
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
OPTIONAL = ('onnx', 'onnxruntime', 'spandrel')  # extras: loaded only when an integration is used
optional_after_import = sorted(m for m in OPTIONAL if m in sys.modules)
import d2csr.integrations.onnx_export, d2csr.integrations.spandrel
optional_after_integrations = sorted(m for m in OPTIONAL if m in sys.modules)
import basicsr.data.degradations  # needs the torchvision shim (functional_tensor) on current torchvision
from basicsr.utils.registry import ARCH_REGISTRY
arch = ARCH_REGISTRY.get('D2CSR').__name__
def owners():
    return [getattr(importlib.import_module(m), a).__module__ for m, a in patched]
before = owners()
pipeline_imported = 'd2csr.pipeline' in sys.modules
api_imported = 'd2csr.upscaler' in sys.modules  # the Python API loads on first use (d2csr.Upscaler)
from d2csr.pipeline import apply_training_patches, training_patches_applied
was = training_patches_applied()
apply_training_patches()
print(json.dumps({'arch': arch, 'before': before, 'pipeline_imported': pipeline_imported, 'api': api_imported,
                  'was_applied': was, 'after': owners(), 'optional': optional_after_import + optional_after_integrations}))
'''


def test_plain_import_leaves_basicsr_untouched_and_the_explicit_call_patches():
    proc = subprocess.run([sys.executable, '-c', PROBE, json.dumps(PATCHED)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result['arch'] == 'D2CSR'  # BasicSR imports (degradations too) and D2C is registered
    # after `import d2csr` every function is BasicSR's own
    for (module, attribute), owner in zip(PATCHED, result['before']):
        assert owner.startswith('basicsr.'), f'{module}.{attribute} is {owner}\'s after a plain import d2csr'
    assert result['pipeline_imported'] is False  # the pipeline changes are not even loaded by import d2csr
    assert result['optional'] == []  # nor onnx / onnxruntime / spandrel, even by the integration modules
    assert result['api'] is False
    assert result['was_applied'] is False
    # the explicit call replaces each of them, silently (the training log says what d2csr changed, in words)
    assert result['after'] == ['d2csr.pipeline'] * len(PATCHED)
    assert lines[:-1] == []


def test_apply_training_patches_is_idempotent_in_process():
    import basicsr.train

    from d2csr import pipeline

    installed = basicsr.train.load_resume_state
    pipeline.apply_training_patches()  # conftest already applied them: nothing changes, nothing printed
    assert pipeline.training_patches_applied() and basicsr.train.load_resume_state is installed
    assert basicsr.train.EnlargedSampler is pipeline.ResumableEnlargedSampler
    # a second install (each d2csr/train.py run makes one) wraps BasicSR's function, never a wrapper
    pipeline.D2CRun('train').install(vars(basicsr.train))
    original = basicsr.train.create_train_val_dataloader.__d2csr_wraps__
    assert original.__module__ == 'basicsr.train' and not hasattr(original, '__d2csr_wraps__')


# --- the package's floors: utils at the bottom, no import cycle ---------------------------------------------------
PACKAGE = ROOT / 'd2csr'


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _d2csr_imports(path):
    """The d2csr modules ``path`` imports, at module level or inside functions (resolved relative imports)."""
    import ast

    name = _module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f'{base}.{alias.name}' for alias in node.names)  # `from pkg import module`
    modules = {_module_name(p) for p in PACKAGE.rglob('*.py')}
    return {m for m in found if m in modules and m != name}


# floor of each part, from the ground up (README, "Layout"): an import may only point to its floor or below
FLOORS = [
    ('d2csr.utils', 1),                                                # knows nothing of D2C
    ('d2csr.archs', 2), ('d2csr.losses', 2), ('d2csr.data', 2), ('d2csr.metrics', 2),   # the method's parts
    ('d2csr.convert', 3), ('d2csr.loading', 3), ('d2csr.tiling', 3), ('d2csr.evaluation', 3), ('d2csr.visualize', 3),
    ('d2csr.options_check', 3), ('d2csr.options_schema', 3), ('d2csr.options', 3),  # on a built network / options
    ('d2csr.banded', 3), ('d2csr.bounded', 3), ('d2csr.memory', 3),    # large images (used by tiling, upscaler)
    ('d2csr.upscaler', 3),                                             # the Python API
    ('d2csr.pipeline', 3),                                             # BasicSR pipeline changes for d2csr's runs
    ('d2csr.models', 4),                                               # training and validation logic
    ('d2csr.integrations', 4),                                         # ONNX export, spandrel (optional extras)
]


def floor(module):
    for prefix, level in FLOORS:
        if module == prefix or module.startswith(prefix + '.'):
            return level
    raise AssertionError(f'{module} has no floor in tests/test_layout.py FLOORS: add it where it belongs')


def test_every_module_imports_and_imports_only_point_down():
    import importlib

    graph = {}
    for path in sorted(PACKAGE.rglob('*.py')):
        name = _module_name(path)
        if name == 'd2csr':
            continue  # the package registers its parts
        if name.endswith(('.train', '.test')) and name.count('.') == 1:
            continue  # the entry points are scripts (their imports are checked by running them)
        importlib.import_module(name)
        graph[name] = _d2csr_imports(path)
    for name, imports in graph.items():
        up = sorted(m for m in imports if m != 'd2csr' and floor(m) > floor(name))
        assert not up, f'{name} (floor {floor(name)}) imports {up}, from a floor above it'


def test_no_import_cycle():
    graph = {_module_name(p): _d2csr_imports(p) for p in PACKAGE.rglob('*.py')}
    graph.pop('d2csr')  # the package imports its parts; nothing inside imports the package itself

    def parents(module):  # importing a.b.c runs a.b's __init__ first
        parts = module.split('.')
        return {'.'.join(parts[:i]) for i in range(2, len(parts))}

    edges = {m: {t for i in imports for t in {i} | parents(i) if t in graph and t != m and not m.startswith(t + '.')}
             for m, imports in graph.items()}
    state, stack = {}, []

    def visit(module):
        state[module] = 'open'
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 'open':
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError('import cycle: ' + ' -> '.join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module)
