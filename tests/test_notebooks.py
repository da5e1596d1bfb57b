"""Every notebook runs top to bottom (code cells executed in order)."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted(pathlib.Path(__file__).parents[1].glob('notebooks/*.ipynb'))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, capsys):
  cells = json.loads(path.read_text())['cells']
  namespace = {}
  for cell in cells:
    if cell['cell_type'] == 'code':
      exec(compile(''.join(cell['source']), f'{path.name}', 'exec'), namespace)  # pylint: disable=exec-used
  out = capsys.readouterr().out
  assert 'Traceback' not in out
  assert out.strip(), 'a notebook that prints nothing shows nothing'


def test_there_is_a_notebook():
  assert NOTEBOOKS
