"The default epochs fitted to the time budget: measured on the run's own batches, and the run that follows the same as one told them."
import json, pytest, torch, pandas as pd
from flowers.budget import budget_epochs, time_batches, MAX_SCALE, YARDSTICK
from flowers.errors import FlowersError
from flowers.train import train

def test_more_time_or_a_faster_machine_fits_more_epochs():
    "Epochs grow with the minutes and the machine's speed, shrink with the time already spent, and stay within 1 and 3x the schedule's"
    per = (5e-3, 2e-3) # seconds per training and validation image: this 2-core EPYC's in fp32 at 64 px
    n = budget_epochs(per, 30, 14)
    assert budget_epochs(per, 30, 14, minutes=6) > n > budget_epochs((7e-3, 3e-3), 30, 14) >= 1
    assert budget_epochs(per, 120, 14) < n # data generation, decoding and lr_find are the budget's too
    assert budget_epochs(per, 30, 14, fp32=3.) <= n # the export counts the validation images again
    assert budget_epochs(per, 400, 14)==1 # out of time: still a model
    assert budget_epochs((1e-5, 1e-5), 0, 14)==MAX_SCALE*14 # a GPU: not past what was measured to help
    # data-parallel: each process trains its share of an epoch at the speed it was timed at; the export and report are the first's alone
    assert n < budget_epochs(per, 30, 14, procs=2) < 2*n + 2
    epoch = YARDSTICK[0]*per[0] + YARDSTICK[1]*per[1]
    assert 30 + n*epoch + sum(YARDSTICK)*per[1] < 5*60 # the epochs and calibration's pass fit the 5 minutes

def test_timing_leaves_the_learner_as_it_was(flower_data):
    "`time_batches` measures by training, then puts the weights and every random stream back, as `lr_find` does"
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from fastai.vision.all import resnet18, set_seed
    set_seed(3)
    dls = count_dls(flower_data[1], size=32, bs=8, seed=3, points=True)
    learn = count_learner(dls, resnet18, pretrained=False)
    before = {k:v.clone() for k,v in learn.model.state_dict().items()}
    state = torch.get_rng_state()
    tr,va = time_batches(learn, n=2, skip=1)
    assert tr > 0 and va > 0 and learn.opt is None and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k,v in learn.model.state_dict().items()) and all(p.grad is None for p in learn.model.parameters())

def test_a_fitted_run_is_the_run_told_its_epochs(flower_data, tmp_path, capsys):
    "No --epochs: the epochs that fit --minutes, said and recorded; its weights are those of a run given that many, to the bit"
    a = train(flower_data[1], out=tmp_path/'a', size=32, bs=8, pretrained='no', minutes=1.5)
    n = json.loads((tmp_path/'a'/'metrics.json').read_text())['epochs']
    assert f"{n} epochs fit 1.5 minutes on this machine" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path/'a'/'history.csv'))==n and json.loads((tmp_path/'a'/'model.json').read_text())
    b = train(flower_data[1], out=tmp_path/'b', size=32, bs=8, pretrained='no', epochs=n)
    assert 'epochs fit' not in capsys.readouterr().out # told: nothing measured
    wa,wb = a.model.state_dict(),b.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

@pytest.mark.parametrize('minutes', [0, -1, float('nan'), float('inf'), True, '5'])
def test_bad_minutes_are_refused(flower_data, tmp_path, minutes):
    with pytest.raises(FlowersError, match='--minutes'): train(flower_data[1], out=tmp_path/'run', size=32, pretrained='no', minutes=minutes)
    assert not (tmp_path/'run').exists()
