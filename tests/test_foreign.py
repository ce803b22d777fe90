"The foreign-style test set of benchmarks/foreign.py: a second renderer that the models are measured on, never trained on"
import sys, numpy as np, pytest
from pathlib import Path
from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'benchmarks'))
from foreign import make_foreign, foreign_field, measure, STYLES, GROUNDS, LAYOUTS
from flowers.counter import load_counter

def _files(path): return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob('*')) if p.is_file()}

def test_foreign_set_is_deterministic_and_complete(tmp_path):
    a = make_foreign(tmp_path/'a', n=6, n_empty=1, seed=7)
    make_foreign(tmp_path/'b', n=6, n_empty=1, seed=7)
    assert _files(tmp_path/'a')==_files(tmp_path/'b')
    assert len(a)==6+len(GROUNDS) and sorted(a[a.empty_set].ground)==sorted(GROUNDS) and (a[a.empty_set]['count']==0).all()
    for f in a.image:
        w,h = Image.open(tmp_path/'a'/'images'/f).size
        assert 180<=w<=320 and 180<=h<=320

@pytest.mark.parametrize('layout', LAYOUTS)
def test_twenty_heads_fit_every_layout(layout):
    "The most crowded fields draw, in every layout and style (placement raises rather than draw fewer heads)"
    for i,style in enumerate(STYLES):
        img,s,_,l = foreign_field(20, 100+i, style, layout=layout)
        assert (s,l)==(style,layout) and img.mode=='RGB'

def test_measure_scores_a_model(trained, tmp_path):
    "The benchmark's numbers, from the session's tiny model: errors against the true counts, empty fields per ground"
    df = make_foreign(tmp_path, n=6, n_empty=1, seed=3)
    counter = load_counter(trained, precision='fp32')
    r = measure(counter, tmp_path)
    p = np.asarray(counter.predict_batch([tmp_path/'images'/f for f in df.image]), float)
    m = ~df.empty_set.to_numpy()
    assert r['mae']==pytest.approx(np.abs(p[m]-df['count'][m]).mean()) and r['bias']==pytest.approx((p[m]-df['count'][m]).mean())
    assert set(r['empty'])==set(GROUNDS) and all(v>=0 for v in r['empty'].values())
