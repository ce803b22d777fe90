import nbformat
from pathlib import Path
from nbclient import NotebookClient

def test_notebook_runs(tmp_path, monkeypatch):
    "The walk-through notebook runs start to finish at tiny settings"
    monkeypatch.setenv('FLOWERS_NB_TINY', '1')
    monkeypatch.setenv('FLOWERS_NB_DIR', str(tmp_path/'data'))
    nb = nbformat.read(Path(__file__).parents[1]/'nbs'/'01_count_flowers.ipynb', as_version=4)
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    out = ''.join(o.get('text', '') for c in nb.cells if c.cell_type=='code' for o in c.get('outputs', []))
    assert 'epochs fit 0.05 minutes on this machine' in out # the CLI's `fit_epochs`, in a budget that fits one
    assert "Undertrained: 1 epochs trained in the 0.05 minutes given, under half the schedule's" in out # and said, as the CLI says it
    assert 'validation MAE' in out and 'flower heads (true:' in out and 'heads counted by tiles' in out
    assert (tmp_path/'data'/'export.pkl').is_file()
