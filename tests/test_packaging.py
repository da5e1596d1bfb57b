"""`pip install -e .` must install moe_jax, and only it.

Building a wheel needs the network (pip fetches setuptools), so this checks
what the build reads: pyproject's [project] table and the package list
setuptools finds with it. Without [project], setuptools saw configs/,
benchmarks/ and tests/ as top-level packages too and refused the build.
"""

import pathlib
import re
import tomllib

import pytest

import moe_jax

# Python 3.12+ venvs come without setuptools.
setuptools = pytest.importorskip('setuptools')

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
  return tomllib.loads((REPO / 'pyproject.toml').read_text())


def test_only_moe_jax_is_packaged():
  find = _pyproject()['tool']['setuptools']['packages']['find']
  packages = setuptools.find_packages(where=str(REPO), **find)
  assert 'moe_jax' in packages
  assert {p.split('.')[0] for p in packages} == {'moe_jax'}


def test_project_table_names_the_package_and_its_dependencies():
  project = _pyproject()['project']
  assert project['name'] == 'moe_jax'
  assert moe_jax.__version__  # The dynamic version's source.
  declared = {re.split(r'[<>=!~ \[]', d)[0].lower().replace('_', '-')
              for d in project['dependencies']}
  pinned = {re.split(r'[<>=!~ ]', line)[0].lower().replace('_', '-')
            for line in (REPO / 'requirements.txt').read_text().splitlines()
            if line.strip() and not line.startswith('#')}
  extras = {re.split(r'[<>=!~ \[]', d)[0].lower()
            for d in project['optional-dependencies']['test']}
  # Everything the library imports is declared; pytest and the notebook
  # runners are test extras; scipy is used by experiments/ only.
  assert pinned - declared - extras == {'jaxlib', 'scipy'}
