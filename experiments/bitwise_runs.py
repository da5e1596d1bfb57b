"""Tiny runs of every config, recorded so that a refactor can be checked bit for bit.

  python -m experiments.bitwise_runs record --out /tmp/before
  ... change the code ...
  python -m experiments.bitwise_runs record --out /tmp/after
  python -m experiments.bitwise_runs compare /tmp/before /tmp/after

`record` trains the `:tiny` twin of every file under configs/ and
configs/presets/ through the CLI, plus a LoRA run, a sparse-upcycling run and
two runs on a (2, 4, 1) mesh of 8 CPU devices (batch 8), and keeps each run's
metrics.jsonl without its timing fields. `compare` exits non-zero unless every
recorded value is equal (exactly: floats are compared as written). A moved
or renamed module must not change a single number; this is how that is shown.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MESH_FLAGS = '--xla_force_host_platform_device_count=8'
# Fields that measure the machine, not the model (matched as substrings,
# so 'seconds' also covers cpu_seconds_per_step).
TIMING = ('tokens_per_sec', 'seconds', 'time', 'flops_per_sec', 'mfu')


def cases(workdirs: pathlib.Path) -> list[tuple[str, list[str], str]]:
  """(name, CLI arguments, XLA_FLAGS) for every recorded run, in run order."""
  out = []
  for path in sorted((ROOT / 'configs').glob('*.py')) + sorted(
      (ROOT / 'configs' / 'presets').glob('*.py')):
    if path.name.startswith('_'):
      continue
    name = str(path.relative_to(ROOT / 'configs'))[:-3].replace('/', '.')
    out.append((name, [f'--config={path}:tiny'], ''))
  switch = ROOT / 'configs' / 'switch_top1.py'
  out.append(('lora', [
      f'--config={switch}:tiny', f'--config.train.init_from={workdirs / "switch_top1"}',
      '--config.lora.rank=2', "--config.lora.targets=('attention','experts')"], ''))
  out.append(('upcycling', [
      f'--config={switch}:tiny', f'--config.train.init_from={workdirs / "dense"}',
      '--config.train.upcycle=True'], ''))
  for name in ('switch_top1', 'soft_moe', 'gshard_top2'):
    out.append((f'mesh_2x4x1.{name}', [
        f'--config={ROOT / "configs" / name}.py:tiny',
        '--config.mesh.shape=(2,4,1)', '--config.batch_size=8'], MESH_FLAGS))
  return out


def record(out: pathlib.Path, only: str | None = None) -> None:
  """Records every case, or those whose name starts with `only`."""
  workdirs = out / 'workdirs'
  workdirs.mkdir(parents=True, exist_ok=True)
  for name, args, xla_flags in cases(workdirs):
    if only and not name.startswith(only):
      continue
    workdir = workdirs / name
    if workdir.exists():
      shutil.rmtree(workdir)
    env = {**os.environ, 'XLA_FLAGS': xla_flags}
    proc = subprocess.run(
        [sys.executable, '-m', 'moe_jax.main', f'--workdir={workdir}', *args],
        cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      sys.exit(f'{name} failed:\n{proc.stderr[-3000:]}')
    rows = [json.loads(line) for line in
            (workdir / 'metrics.jsonl').read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if not any(t in k for t in TIMING)}
            for row in rows]
    (out / f'{name}.json').write_text(json.dumps(rows, indent=0))
    print(f'{name}: {len(rows)} records')


def compare(a: pathlib.Path, b: pathlib.Path) -> int:
  names = sorted({p.name for p in a.glob('*.json')} |
                 {p.name for p in b.glob('*.json')})
  bad = 0
  for name in names:
    if not (a / name).exists() or not (b / name).exists():
      print(f'{name}: missing in one recording')
      bad += 1
      continue
    ra, rb = (json.loads((d / name).read_text()) for d in (a, b))
    if ra == rb:
      print(f'{name}: identical ({len(ra)} records)')
      continue
    bad += 1
    for x, y in zip(ra, rb):
      diff = {k for k in x.keys() | y.keys() if x.get(k) != y.get(k)}
      if diff:
        print(f'{name}: differs at step {x.get("step")}: '
              + ', '.join(f'{k} {x.get(k)} vs {y.get(k)}' for k in sorted(diff)[:4]))
        break
    else:
      print(f'{name}: {len(ra)} vs {len(rb)} records')
  print(f'{len(names) - bad} of {len(names)} runs identical')
  return 1 if bad else 0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  rec = sub.add_parser('record')
  rec.add_argument('--out', type=pathlib.Path, required=True)
  rec.add_argument('--only', help='record only the cases with this prefix')
  cmp = sub.add_parser('compare')
  cmp.add_argument('a', type=pathlib.Path)
  cmp.add_argument('b', type=pathlib.Path)
  args = parser.parse_args()
  if args.command == 'record':
    record(args.out, args.only)
  else:
    sys.exit(compare(args.a, args.b))


if __name__ == '__main__':
  main()
