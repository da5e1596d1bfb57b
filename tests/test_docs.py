"""README.md and docs/*.md point only at things that exist in the checkout.

Checked, without importing anything heavy:
- relative links and images, and `#anchors` into a Markdown file's headings;
- backticked repository paths (`moe_jax/...`, `configs/...`, ...), also where
  they appear in code blocks; `*` globs must match something, and paths with
  a `<placeholder>` are skipped;
- Python module names: `python -m X`, `import X` and `from X import a, b` in
  code blocks, and backticked dotted names like `moe_jax.train.evaluate`;
- config fields: backticked `moe.top_k`-style names (also `--config.x.y=v`
  and `config.x.y`) and `--config.x.y=` flags in code blocks must be fields
  of the default config;
- the README stays a front page (<= 200 lines), and every docs page starts,
  after its title, with a code block (a runnable example).

When code moves, this test lists every stale reference with its file and
line, so the docs can be fixed in one pass.
"""

from __future__ import annotations

import ast
import functools
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / 'docs').glob('*.md'))
PAGES = [ROOT / 'README.md'] + DOCS
README_MAX_LINES = 200

TOP = ('moe_jax', 'configs', 'experiments', 'notebooks', 'benchmarks', 'docs',
       'tests')
# Packages whose module names the docs may spell with dots.
PACKAGES = ('moe_jax', 'experiments', 'benchmarks')

_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
_INLINE_CODE = re.compile(r'`([^`\n]+)`')
_PATH = re.compile(r'(?<![\w./-])((?:%s)/[\w./*<>{}:-]*)' % '|'.join(TOP))
_FILE_SUFFIX = re.compile(r'\.(py|ipynb|md|sh|png|json|csv|txt|toml|bin|npy)$')
_RUN_MODULE = re.compile(r'python3? -m ([\w.]+)')
_IMPORT = re.compile(r'^\s*import ([\w.]+)', re.M)
_FROM_IMPORT = re.compile(r'^\s*from ([\w.]+) import ([\w, ()]+)', re.M)
_DOTTED = re.compile(r'^(%s)(\.\w+)+$' % '|'.join(PACKAGES))
SECTIONS = ('moe', 'model', 'train', 'data', 'lora', 'mesh', 'optim')
_FIELD = re.compile(r'^(?:--config\.|config\.)?((?:%s)(?:\.\w+)+)(?:=.*)?$'
                    % '|'.join(SECTIONS))
_FIELD_FLAG = re.compile(r'--config\.([\w.]+)=')


def _blocks(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
  """(prose lines, code lines), each as (line number, text)."""
  prose, code, fenced = [], [], False
  for i, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith('```'):
      fenced = not fenced
      continue
    (code if fenced else prose).append((i, line))
  return prose, code


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading."""
  s = re.sub(r'[^\w\- ]', '', heading.strip().lower().replace('`', ''))
  return s.replace(' ', '-')


@functools.cache
def _anchors(path: pathlib.Path) -> frozenset[str]:
  prose, _ = _blocks(path.read_text())
  return frozenset(_slug(line.lstrip('#')) for _, line in prose
                   if line.startswith('#'))


def _normalise(rel: str) -> str:
  """A path without a pytest `::test` id, a config's `:arg` or punctuation."""
  rel = rel.split('::')[0].rstrip('.,;)')
  return re.sub(r'\.py:\w*$', '.py', rel).rstrip(':')


def _path_exists(rel: str) -> bool:
  rel = _normalise(rel)
  if '*' in rel:
    return any(ROOT.glob(rel))
  return (ROOT / rel).exists()


def _module_file(name: str) -> pathlib.Path | None:
  base = ROOT.joinpath(*name.split('.'))
  for p in (base.with_suffix('.py'), base / '__init__.py'):
    if p.is_file():
      return p
  return None


@functools.cache
def _defined_names(module: pathlib.Path) -> frozenset[str]:
  """Names a module defines or imports at its top level."""
  names = set()
  for node in ast.parse(module.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(t.id for t in targets if isinstance(t, ast.Name))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
  return frozenset(names)


def _name_exists(dotted: str) -> bool:
  """A module, or a name defined in its parent module."""
  if _module_file(dotted):
    return True
  parent, _, attr = dotted.rpartition('.')
  module = _module_file(parent) if parent else None
  return module is not None and attr in _defined_names(module)


@functools.cache
def _default_config():
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(ROOT))
  # Light: ml_collections only, no JAX.
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  return get_default_config()


def _field_exists(dotted: str) -> bool:
  node = _default_config()
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def _problems(page: pathlib.Path) -> list[str]:
  text = page.read_text()
  prose, code = _blocks(text)
  where = lambda i: f'{page.relative_to(ROOT)}:{i}'
  out = []
  for i, line in prose:
    # Links and images, relative to the page; anchors into Markdown files.
    for target in _LINK.findall(line):
      if re.match(r'[a-z]+:', target):
        continue
      rel, _, anchor = target.partition('#')
      dest = (page.parent / rel).resolve() if rel else page
      if not dest.exists():
        out.append(f'{where(i)}: link to a missing path: {target}')
      elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest):
        out.append(f'{where(i)}: link to a missing heading: {target}')
    for span in _INLINE_CODE.findall(line):
      for rel in _PATH.findall(span):
        if '<' not in rel and '{' not in rel and not _path_exists(rel):
          out.append(f'{where(i)}: missing path `{rel}`')
      if _DOTTED.match(span) and not _name_exists(span):
        out.append(f'{where(i)}: missing module or name `{span}`')
      field = _FIELD.match(span)
      if (field and not _FILE_SUFFIX.search(span)
          and not _field_exists(field.group(1))):
        out.append(f'{where(i)}: `{span}`: the config has no field '
                   f'{field.group(1)}')
    for name in _RUN_MODULE.findall(line):
      if name.startswith(PACKAGES) and not _module_file(name):
        out.append(f'{where(i)}: `python -m {name}`: no such module')
  for i, line in code:
    for rel in _PATH.findall(line):
      rel = _normalise(rel)
      if '<' in rel or '{' in rel or not (_FILE_SUFFIX.search(rel) or
                                          '*' in rel):
        continue
      if not _path_exists(rel):
        out.append(f'{where(i)}: missing path {rel} (in a code block)')
    for name in _RUN_MODULE.findall(line):
      if name.startswith(PACKAGES) and not _module_file(name):
        out.append(f'{where(i)}: `python -m {name}`: no such module')
    for field in _FIELD_FLAG.findall(line):
      if not _field_exists(field):
        out.append(f'{where(i)}: --config.{field}: the config has no such '
                   'field')
    for name in _IMPORT.findall(line):
      if name.startswith(PACKAGES) and not _module_file(name):
        out.append(f'{where(i)}: `import {name}`: no such module')
    m = _FROM_IMPORT.match(line)
    if m and m.group(1).startswith(PACKAGES):
      module = m.group(1)
      if not _module_file(module):
        out.append(f'{where(i)}: `from {module} import`: no such module')
        continue
      for attr in re.split(r'[,\s()]+', m.group(2)):
        if attr and not _name_exists(f'{module}.{attr}'):
          out.append(f'{where(i)}: `from {module} import {attr}`: '
                     f'{module} has no {attr}')
  return out


def test_docs_exist():
  assert len(DOCS) >= 5, 'docs/ should hold the reference pages'


def test_every_path_link_and_module_in_the_docs_exists():
  problems = [p for page in PAGES for p in _problems(page)]
  assert not problems, (
      f'{len(problems)} stale reference(s) in README.md and docs/ (fix the '
      'docs, or the path if it moved):\n  ' + '\n  '.join(problems))


def test_readme_is_a_front_page():
  n = len((ROOT / 'README.md').read_text().splitlines())
  assert n <= README_MAX_LINES, (
      f'README.md has {n} lines (at most {README_MAX_LINES}): move reference '
      'text to a page under docs/ and link to it')


def test_each_docs_page_starts_with_an_example():
  bad = []
  for page in DOCS:
    lines = [l for l in page.read_text().splitlines() if l.strip()]
    if len(lines) < 2 or not lines[0].startswith('# '):
      bad.append(f'{page.relative_to(ROOT)}: the first line should be its '
                 '# title')
    elif not lines[1].startswith('```'):
      bad.append(f'{page.relative_to(ROOT)}: after the title comes '
                 f'{lines[1][:60]!r}, not a code block (a runnable example)')
  assert not bad, '\n'.join(bad)
