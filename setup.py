#!/usr/bin/env python
"""d2csr: D2C-SR (ECCV 2022) as a BasicSR plugin."""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable wheels
    editable_wheel = None

HOOK_PTH = 'd2csr-basicsr-hook.pth'  # one line: installs d2csr_basicsr_hook's finder (see that module)
HOOK_PTH_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), HOOK_PTH)


class BuildPyWithHook(build_py):
    """Also puts the ``.pth`` file at the root of site-packages (``pip install .`` and ``pip install -e .``),
    so that BasicSR's own ``python -m basicsr.train`` / ``basicsr/test.py`` find d2csr."""

    def run(self):
        super().run()
        self.copy_file(HOOK_PTH_SRC, os.path.join(self.build_lib, HOOK_PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, HOOK_PTH)]


cmdclass = {'build_py': BuildPyWithHook}
if editable_wheel is not None:

    class EditableWheelWithHook(editable_wheel):
        """``pip install -e .``: the editable wheel carries the same ``.pth`` file (it is processed after
        setuptools' own ``__editable__.d2csr-*.pth``, so the hook module is importable by then)."""

        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
            result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            shutil.copy(HOOK_PTH_SRC, os.path.join(unpacked_wheel, HOOK_PTH))
            return result

    cmdclass['editable_wheel'] = EditableWheelWithHook


setup(
    name='d2csr',
    version='0.1.0',
    description='D2C-SR: A Divergence to Convergence Approach for Real-World Image Super-Resolution (BasicSR plugin)',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['d2csr', 'd2csr.*']),
    py_modules=['d2csr_basicsr_hook'],
    cmdclass=cmdclass,
    python_requires='>=3.9',
    install_requires=[
        'basicsr==1.4.2',
        'torch>=2.1,<2.15',
        'torchvision>=0.16,<0.30',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'numpy',
        'scikit-image',
        'tqdm',
        'lpips>=0.1.4',
    ],
    extras_require={
        'test': ['pytest', 'pytest-xdist', 'matplotlib'],
        'plot': ['matplotlib'],
        'onnx': ['onnx>=1.14', 'onnxruntime>=1.16'],  # scripts/export_onnx.py, d2csr.integrations.onnx_export
        'spandrel': ['spandrel>=0.4,<0.5'],  # d2csr.integrations.spandrel (ComfyUI, chaiNNer)
    },
    license='Apache-2.0',
)
