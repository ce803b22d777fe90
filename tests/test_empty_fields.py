"The empty fields of benchmarks/generalisation.py and empty_fields.py: ground without a head, of every background family"
import json, sys, pandas as pd, pytest
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'benchmarks'))
from generalisation import empty_sets, empty_counts
from flowers.synth import BACKGROUNDS
from flowers.counter import load_counter

def test_empty_sets_hold_no_head_and_are_counted_per_background(trained, tmp_path):
    sets = empty_sets(tmp_path, n=2, seed=5)
    assert list(sets)==list(BACKGROUNDS)
    for b,csv in sets.items():
        assert (pd.read_csv(csv)['count']==0).all() and pd.read_csv(csv.parent/'points.csv').empty
        assert json.loads((csv.parent/'synth.json').read_text())['backgrounds']==[b]
    counter = load_counter(trained, precision='fp32')
    got = empty_counts(counter, sets)
    for b,csv in sets.items():
        want = counter.predict_batch([csv.parent/'images'/f for f in pd.read_csv(csv)['image']]).mean()
        assert got[b]==pytest.approx(float(want)) and got[b]>=0

def test_the_command_counts_each_runs_empty_fields(trained, tmp_path):
    "`python benchmarks/empty_fields.py RUN,RUN`: a row for each run, a mean count for each background, as the line it prints says"
    import subprocess
    bench = Path(__file__).resolve().parents[1]/'benchmarks'/'empty_fields.py'
    r = subprocess.run([sys.executable, bench, f'{trained},{trained}', '--n', '2', '--root', tmp_path/'fields', '--out', tmp_path/'empty'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode==0, r.stderr
    res = json.loads((tmp_path/'empty.json').read_text()) # an absolute --out: not into benchmarks/results
    assert res['n']==2 and [row['run'] for row in res['runs']]==[str(trained)]*2
    for row in res['runs']:
        assert list(row['empty'])==list(BACKGROUNDS) and row['mean']==pytest.approx(sum(row['empty'].values())/len(BACKGROUNDS))
        assert f"{trained}: mean {row['mean']:.2f}; " in r.stdout
    assert res['runs'][0]['empty']==res['runs'][1]['empty'] # the same fields, counted again by the same model
