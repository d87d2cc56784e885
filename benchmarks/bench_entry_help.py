"""How fast ``d2csr/train.py --help`` answers, against what importing torch and BasicSR costs.

    python benchmarks/bench_entry_help.py [--repeat 3]

Runs each command ``--repeat`` times in a fresh interpreter (median wall and CPU seconds): ``d2csr/train.py
--help`` and ``d2csr/test.py --help`` (their arguments are parsed before torch is imported) and ``import torch,
basicsr`` (with d2csr's hook, as an installed d2csr has it), and prints the ratio. The target: well under half.
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def measure(cmd, env, repeat):
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    rows = [('d2csr/train.py --help', [sys.executable, 'd2csr/train.py', '--help']),
            ('d2csr/test.py --help', [sys.executable, 'd2csr/test.py', '--help']),
            ('import torch, basicsr', [sys.executable, '-c', 'import torch, basicsr'])]
    results = {label: measure(cmd, env, args.repeat) for label, cmd in rows}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float('nan')
    print(f'{os.cpu_count()} CPUs, load average {load:.1f}, median of {args.repeat}')
    print('| command | wall s | CPU s |\n|---|---|---|')
    for label, (wall, cpu) in results.items():
        print(f'| {label} | {wall:.2f} | {cpu:.2f} |')
    base_wall, base_cpu = results['import torch, basicsr']
    for label in ('d2csr/train.py --help', 'd2csr/test.py --help'):
        wall, cpu = results[label]
        print(f'{label}: {wall / base_wall:.2f} x the wall time, {cpu / base_cpu:.2f} x the CPU time of '
              'import torch, basicsr')
    return results


if __name__ == '__main__':
    main()
