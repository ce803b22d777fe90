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
