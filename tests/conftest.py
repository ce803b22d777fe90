import os, pytest
os.environ.setdefault('OMP_NUM_THREADS', '2')
from flowers.synth import make_flowers

@pytest.fixture(scope='session')
def flower_data(tmp_path_factory):
    "A small synthetic data set shared by the whole session: (folder, csv)"
    path = tmp_path_factory.mktemp('flowers')
    csv = make_flowers(path, n=48, size=64, max_count=8, seed=1, show_progress=False)
    return path, csv
