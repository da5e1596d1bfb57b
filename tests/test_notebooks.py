"""Every notebook runs top to bottom in a real Jupyter kernel, and the
committed copies keep the outputs of a full run.

The kernel is the one `jupyter_client` finds for 'python3' (ipykernel's, run
with this interpreter). MOE_JAX_NOTEBOOK_FAST=1 shrinks each notebook's
training to seconds; the committed outputs come from a full run (see
README.md, "Routing analysis", for the command that refreshes them).
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).parents[1] / 'notebooks'
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob('*.ipynb'))


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel(path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  for cell in _code_cells(nb):
    cell.outputs = []
  # The kernel inherits this environment: FAST mode, and no GUI backend.
  monkeypatch.setenv('MOE_JAX_NOTEBOOK_FAST', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  client = NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(NOTEBOOK_DIR)}})
  client.execute()  # Raises CellExecutionError on any error.
  images = sum('image/png' in o.get('data', {})
               for c in _code_cells(nb) for o in c.outputs)
  assert images, f'{path.name} drew no plot'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_keeps_its_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(_code_cells(nb)):
    assert cell.outputs, f'{path.name}: code cell {i} has no outputs; run ' \
        'the notebook in full and commit it with its outputs'
    errors = [o for o in cell.outputs if o.output_type == 'error']
    assert not errors, f'{path.name}: code cell {i} holds an error'
  assert any('image/png' in o.get('data', {})
             for c in _code_cells(nb) for o in c.outputs), \
      f'{path.name} shows no plot'


def test_there_are_the_four_notebooks():
  names = {p.name for p in NOTEBOOKS}
  assert {'01_router_mechanics.ipynb', '02_what_the_router_learned.ipynb',
          '03_capacity_and_drops.ipynb', '04_routing_drift.ipynb'} <= names
