#!/usr/bin/env python
"""d2csr: D2C-SR (ECCV 2022) as a BasicSR plugin."""
from setuptools import find_packages, setup

setup(
    name='d2csr',
    version='0.1.0',
    description='D2C-SR: A Divergence to Convergence Approach for Real-World Image Super-Resolution (BasicSR plugin)',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['d2csr', 'd2csr.*']),
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
    extras_require={'test': ['pytest', 'matplotlib'], 'plot': ['matplotlib']},
    license='Apache-2.0',
)
