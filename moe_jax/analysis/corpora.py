"""A labelled code + English prose (+ synthetic) mix found on every machine.

Testing the claim that experts specialise in code or natural language needs
both, with a domain label per byte, and nothing to download: the Python
standard library holds both. Code is its source with docstrings and comments
removed (ast.unparse keeps neither); prose is its docstrings, which are
English. The synthetic languages of data.synthetic.synthetic_mixture can be
added as further domains.
"""

from __future__ import annotations

import ast
import os
import pathlib
import warnings

import numpy as np

from moe_jax.data import code_corpora
from moe_jax.data.corpus import Corpus
from moe_jax.data.synthetic import synthetic_mixture

_SKIP = frozenset({'site-packages', 'dist-packages', 'test', 'tests',
                   'idlelib', '__pycache__', 'lib2to3', 'turtledemo'})


def _stdlib_files():
  return code_corpora.stdlib_files(_SKIP)


def _split_module(tree: ast.Module, min_prose: int):
  """(code without docstrings, [docstrings of >= min_prose bytes])."""
  prose = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc is None:
        continue
      if len(doc) >= min_prose:
        prose.append(doc)
      body = node.body[1:] or [ast.Pass()]
      node.body = body
  return ast.unparse(tree), prose


def stdlib_code_and_prose(bytes_each: int, min_prose: int = 300
                          ) -> tuple[bytes, bytes]:
  """(code, prose), each about bytes_each long, from the stdlib sources."""
  code, prose, n_code, n_prose = [], [], 0, 0
  for path in _stdlib_files():
    if n_code >= bytes_each and n_prose >= bytes_each:
      break
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # Invalid escapes in old modules.
        tree = ast.parse(path.read_bytes())
      text, docs = _split_module(tree, min_prose)
    except (SyntaxError, ValueError, OSError, RecursionError):
      continue
    if n_code < bytes_each:
      code.append(text.encode())
      n_code += len(code[-1]) + 1
    for d in docs:
      if n_prose < bytes_each:
        prose.append(d.encode())
        n_prose += len(prose[-1]) + 2
  return (b'\n'.join(code)[:bytes_each], b'\n\n'.join(prose)[:bytes_each])


def code_prose_mix(num_bytes: int, synthetic_domains: int = 0,
                   seed: int = 0) -> tuple[Corpus, list[str]]:
  """A corpus of interleaved documents, each from one labelled domain.

  Each domain's text is cut into documents of 300-1,000 bytes, and the
  documents are shuffled together, so any window of a few hundred bytes is
  mostly one domain and the validation tail holds every domain.

  Args:
    num_bytes: N, about the corpus length (split evenly between domains).
    synthetic_domains: how many synthetic languages to add.
    seed: document order and the synthetic languages.

  Returns:
    (Corpus with domains int32 [N], domain names): 0 'code', 1 'prose',
    then 'synthetic 0', ...
  """
  num_domains = 2 + synthetic_domains
  each = num_bytes // num_domains
  code, prose = stdlib_code_and_prose(each)
  streams = [np.frombuffer(code, np.uint8), np.frombuffer(prose, np.uint8)]
  names = ['code', 'prose']
  if synthetic_domains:
    tokens, domains = synthetic_mixture(
        each * synthetic_domains, synthetic_domains, seed)
    for d in range(synthetic_domains):
      streams.append(tokens[domains == d])
      names.append(f'synthetic {d}')
  rng = np.random.default_rng(seed)
  docs = []
  for label, stream in enumerate(streams):
    cuts = np.cumsum(rng.integers(300, 1001, size=len(stream) // 300 + 1))
    for piece in np.split(stream, cuts[cuts < len(stream)]):
      if len(piece):
        docs.append((label, piece))
  order = rng.permutation(len(docs))
  tokens = np.concatenate([docs[i][1] for i in order]).astype(np.uint8)
  labels = np.concatenate([np.full(len(docs[i][1]), docs[i][0], np.int32)
                           for i in order])
  return Corpus(tokens, labels, 'stdlib code+prose mix'), names


def write_mix(path, num_bytes: int, synthetic_domains: int = 0,
              seed: int = 0) -> str:
  """Writes code_prose_mix's bytes to `path` (for data.kind='text') and its
  domain labels beside it (domains_path), once; returns the path.

  A run trains on the bytes; an analysis of its checkpoint reads the labels
  back with read_mix (the trainer's split depends only on the length, so
  split_corpus of the labelled corpus holds out the same windows). Both
  files are written to a temporary name and renamed, so a process that sees
  them sees them whole.
  """
  path = pathlib.Path(path).expanduser()
  if path.exists() and domains_path(path).exists():
    return str(path)
  mix, _ = code_prose_mix(num_bytes, synthetic_domains, seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  suffix = f'.tmp{os.getpid()}'
  labels = domains_path(path)
  # uint8: a quarter of int32's bytes; there are at most 2 + a few domains.
  np.save(str(labels) + suffix, mix.domains.astype(np.uint8),
          allow_pickle=False)
  os.replace(str(labels) + suffix + '.npy', labels)
  tmp = path.with_name(path.name + suffix)
  tmp.write_bytes(mix.tokens.tobytes())
  os.replace(tmp, path)
  return str(path)


def domains_path(path) -> pathlib.Path:
  """Where write_mix keeps the domain labels of the mix at `path`."""
  path = pathlib.Path(path)
  return path.with_name(path.name + '.domains.npy')


def read_mix(path) -> Corpus:
  """The labelled Corpus of a file written by write_mix."""
  path = pathlib.Path(path).expanduser()
  tokens = np.frombuffer(path.read_bytes(), np.uint8)
  domains = np.load(domains_path(path), allow_pickle=False)
  if len(domains) != len(tokens):
    raise ValueError(f'{path} holds {len(tokens)} bytes but its labels '
                     f'{len(domains)}; delete both and write them again.')
  return Corpus(tokens, domains.astype(np.int32), 'stdlib code+prose mix')
