import json, os, re, subprocess, sys, pytest, torch, torchvision, pandas as pd
from flowers import FlowersError
from fastai.vision.all import Normalize, imagenet_stats, default_device
from fastai.vision.all import load_learner
from flowers.train import train
from flowers.fitting import SCRATCH_LR
from flowers.precision import auto_precision, BF16Training
from flowers.settings import SCHEDULES, default_schedule
from flowers.learner import weights_file
from conftest import load_learner_count, main_here
from test_predict import predict_here

RUN_FILES = ['export.pkl','metrics.json','predictions.csv','history.csv','loss.png','lr_find.png','predicted_vs_true.png','worst.png']

def run_cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, '-m', 'flowers.train', *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)

def train_here(capsys, **kw):
    "`python -m flowers.train` in this process (`main_here`)"
    from flowers.train import main
    return main_here(capsys, main, **kw)

def test_cli_run_writes_everything(trained):
    out = trained
    for f in RUN_FILES: assert (out/f).is_file(), f
    m = json.loads((out/'metrics.json').read_text())
    for k in ('mae','rmse','r2','bias','relative_mae','n_train','n_valid','lr','epochs','arch','size','recipe','pretrained','seconds','versions'):
        assert k in m, k
    assert m['recipe']=='fit_one_cycle' and m['pretrained'] is False and m['n_train']+m['n_valid']==48
    preds = pd.read_csv(out/'predictions.csv')
    assert list(preds.columns)==['image','count','predicted','error'] and len(preds)==m['n_valid']
    assert abs(preds['error'].abs().mean() - m['mae']) < 1e-4 and (preds['predicted']>0).all()
    assert len(pd.read_csv(out/'history.csv'))==m['epochs'] # fit_one_cycle: no frozen epochs

def test_a_run_folder_among_photos_adds_no_photos(trained, tmp_path):
    "`--out photos/model` once made the next count of photos/ count the run's plots too: they are left out, and said so"
    import shutil
    from flowers.settings import RUN_PLOTS
    from flowers.predict import find_images
    assert {p.name for p in trained.glob('*.png')}==set(RUN_PLOTS) # every picture a run writes is one it knows
    photos = tmp_path/'photos'
    shutil.copytree(trained, photos/'model'); shutil.copy(trained/'worst.png', photos/'plot7.png') # a photo may share a plot's look, not its folder
    with pytest.warns(UserWarning, match=f"left out {len(RUN_PLOTS)} picture\\(s\\) in {photos/'model'}: a training run's plots"): got,_ = find_images([photos])
    assert got==[photos/'plot7.png']

def test_export_predicts_in_fresh_process(trained, flower_data):
    "The exported model in a new Python with plain `load_learner`, as other scripts load it: the session's model is the schedule's network, so one process shows it for the other tests' runs"
    n = load_learner_count(trained/'export.pkl', flower_data[0]/'images'/'00003.jpg', fresh=True)
    assert 0 <= n < 50 # counts 0..8: a count map of a 2-epoch model stays near them

SHOW = """
import sys, matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt, pandas as pd
from fastai.vision.all import load_learner
learn = load_learner(sys.argv[1]) # plain fastai: flowers comes in with the pickle, and its show_results with it
df = pd.read_csv(sys.argv[2]) # its names, found in the folder the model was trained from
dl = learn.dls.test_dl(df[['image','count']], with_labels=True)
learn.show_results(dl=dl, max_n=3)
print('|'.join(ax.get_title() for ax in plt.gcf().axes if ax.get_title()))
"""

def test_show_results_of_the_export_in_fresh_process(trained, flower_data):
    "A script that only loads export.pkl gets fastai's `show_results` for counts (fastai's own stops with a TypeError)"
    r = subprocess.run([sys.executable, '-c', SHOW, str(trained/'export.pkl'), str(flower_data[1])],
                       capture_output=True, text=True, cwd='/')
    assert r.returncode==0, r.stderr
    titles = r.stdout.strip().splitlines()[-1].split('|')
    counts = pd.read_csv(flower_data[1])['count'][:3]
    assert len(titles)==3 and [float(t.split(' / ')[0]) for t in titles]==[float(c) for c in counts]

def test_cli_lr_find(trained):
    "--lr find: the valley of lr_find, its plot saved"
    m = json.loads((trained/'metrics.json').read_text())
    assert m['lr']!=SCRATCH_LR and 1e-6 <= m['lr'] <= 1 and (trained/'lr_find.png').stat().st_size > 10_000

def test_random_init_defaults(flower_data, tmp_path):
    "From random init: the schedule's lr without lr_find, the CPU's precision, and an export that is plain fp32 with no cached images"
    train(flower_data[1], out=tmp_path, size=32, bs=8, epochs=1, pretrained='no')
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert m['lr']==default_schedule(m['precision'])['lr'] and not (tmp_path/'lr_find.png').exists()
    assert m['recipe']=='fit_one_cycle' and m['freeze_epochs']==0 # a number in every run's metrics.json, as scripts read it
    assert m['precision']==auto_precision(default_device())
    learn = load_learner(tmp_path/'export.pkl')
    assert not any(isinstance(cb, BF16Training) for cb in learn.cbs)
    assert learn.dls.train.cache is None and learn.dls.valid.cache is None
    assert all(p.is_contiguous() and p.dtype==torch.float32 for p in learn.model.parameters())

def test_column_names_of_any_kind(flower_data, tmp_path, capsys):
    "A spreadsheet's 'file name' and 'flower count' columns train, calibrate and predict end to end (calibration once failed on the space)"
    df = pd.read_csv(flower_data[1]).rename(columns={'image': 'file name', 'count': 'flower count'})
    df.to_csv(tmp_path/'mine.csv', index=False)
    learn = train(tmp_path/'mine.csv', img_dir=flower_data[0]/'images', fn_col='file name', label_col='flower count', out=tmp_path/'run', size=32, bs=8, epochs=1, pretrained='no')
    assert learn.calibration.aspect is not None and len(pd.read_csv(tmp_path/'run'/'predictions.csv'))==len(learn.dls.valid_ds)
    (tmp_path/'images').symlink_to(flower_data[0]/'images') # predict finds them beside the CSV, and scores its 'flower count'
    r = subprocess.run([sys.executable, '-m', 'flowers.predict', tmp_path/'run', tmp_path/'mine.csv', '--out', tmp_path/'o.csv'], capture_output=True, text=True)
    assert r.returncode==0 and 'On the 48 images with a true count' in r.stdout, r.stderr
    assert pd.read_csv(tmp_path/'o.csv')['true'].tolist()==df['flower count'].tolist()
    code,out,err = predict_here(capsys, tmp_path/'run'/'export.pkl', tmp_path/'mine.csv')
    assert code==0 and 'On the 48 images with a true count' in out, err # the pickle knows its column too

def test_default_schedule_follows_the_precision(flower_data, tmp_path, capsys, short_schedules):
    "No --epochs, --bs or --lr: as many epochs as fit the time budget in the precision training runs in, its batch size and lr, printed and recorded"
    train(flower_data[1], out=tmp_path, size=32, pretrained='no', precision='fp32', minutes=1)
    out = capsys.readouterr().out
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert f"{m['epochs']} epochs fit 1 minutes on this machine" in out and f"the schedule's {SCHEDULES['fp32']['epochs']}, and at most 3 times that" in out
    assert f"{m['epochs']} epochs, lr=" in out and f"head context {SCHEDULES['fp32']['context']}" in out
    assert 1 <= m['epochs']==len(pd.read_csv(tmp_path/'history.csv')) <= 3*SCHEDULES['fp32']['epochs'] and m['size']==32
    assert m['context']==SCHEDULES['fp32']['context']==json.loads((tmp_path/'model.json').read_text())['context']
    assert m['norm']==SCHEDULES['fp32']['norm']=='ibn'==json.loads((tmp_path/'model.json').read_text())['norm'] # from random init, as in bf16
    assert m['bs']==SCHEDULES['fp32']['bs']==16 and m['lr']==SCHEDULES['fp32']['lr']==SCRATCH_LR # the schedule of the rounds before, in fp32
    assert default_schedule('bf16')['epochs'] > SCHEDULES['fp32']['epochs'] # bf16 CPUs and GPUs train several times faster

def test_the_machines_schedule_end_to_end(flower_data, tmp_path):
    "The CLI given only data and one epoch: this machine's schedule (precision, size, stem, head, batch, lr) trains, is recorded, and its export counts with plain load_learner as the safe format does"
    from flowers.predict import load_counter
    out,img = tmp_path/'run',flower_data[0]/'images'/'00001.jpg'
    r = subprocess.run([sys.executable, '-m', 'flowers.train', '--data', str(flower_data[0]), '--out', str(out), '--epochs', '1', '--pretrained', 'no'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode==0, r.stderr
    m,meta = (json.loads((out/f).read_text()) for f in ('metrics.json', 'model.json'))
    s = default_schedule(m['precision'])
    assert m['precision']==auto_precision(default_device()) and f"{s['size']}px" in r.stdout
    assert [m[k] for k in ('size','stem','context','bs','lr','norm')]==[s[k] for k in ('size','stem','context','bs','lr','norm')]
    assert [meta[k] for k in ('size','stem','context','norm')]==[s[k] for k in ('size','stem','context','norm')]
    assert load_learner_count(out/'export.pkl', img)==pytest.approx(load_counter(out/'model.safetensors', precision='fp32').predict(img), abs=1e-3)

@pytest.mark.parametrize('given,pre,sched,want', [
    (dict(), False, 'gpu', dict(stem=4, size=160, norm='ibn')), # a GPU's: twice the pixels a side, the same maps as 80 px
    (dict(), True, 'gpu', dict(stem=2, size=80, norm='bn')), # a pretrained body keeps the stem and norm it learnt with, at the maps' size
    (dict(size=96), False, 'gpu', dict(stem=2, size=96, norm='ibn')), # a size asked for is the input: its map is not made coarser
    (dict(stem=2), False, 'gpu', dict(stem=2, size=80)),
    (dict(), False, 'fast', dict(stem=3, size=120, norm='ibn')), # a CPU's, in bf16: 1.5 times the pixels a side; at 160 px its epochs would pass 5 minutes
    (dict(), True, 'fast', dict(stem=2, size=80, norm='bn')),
    (dict(stem=2), False, 'fast', dict(stem=2, size=80)), # the maps of the schedule's size, whatever the stem
    (dict(stem=4), False, 'fast', dict(stem=4, size=160)),
    (dict(stem=3), False, 'gpu', dict(stem=3, size=120)),
    (dict(stem=4), False, 'fp32', dict(stem=4, size=128)),
    (dict(stem=3), False, 'fp32', dict(stem=3, size=96)),
])
def test_the_stem_and_size_follow_the_schedule(given, pre, sched, want):
    "Settings left to the schedule: its stem from random init at its size only, the size for the stem, both saved for --resume"
    from fastcore.basics import AttrDict
    from flowers.fitting import _fill_schedule
    a = AttrDict(dict(dict(norm=None, stem=None, size=None, epochs=None, bs=None, context=None, lr=None), **given))
    args = dict(a)
    _fill_schedule(a, args, SCHEDULES[sched], pre)
    assert {k:a[k] for k in want}==want and {k:args[k] for k in want}==want and a.epochs==SCHEDULES[sched]['epochs'] and a.lr is None

def test_a_gpu_has_its_schedule():
    assert default_schedule('fp16', torch.device('cuda', 0)) is default_schedule('bf16', 'cuda') is SCHEDULES['gpu']
    assert default_schedule('bf16', torch.device('cpu')) is default_schedule('bf16') is SCHEDULES['fast']
    assert default_schedule('fp32', 'cuda') is SCHEDULES['fp32'] # fp32 asked for: the fp32 schedule, wherever it runs

def test_the_norm_follows_the_schedule_in_both_formats(trained, flower_data):
    "From random init, the session's run has the norm of its precision's schedule (IBN), recorded and rebuilt alike"
    from flowers.ibn import body_norm
    from flowers.predict import load_counter
    m,meta = (json.loads((trained/f).read_text()) for f in ('metrics.json','model.json'))
    assert m['norm']==meta['norm']==default_schedule(m['precision'])['norm']
    safe,pkl = load_counter(trained),load_counter(trained/'export.pkl')
    assert body_norm(safe.model[0])==body_norm(pkl.model[0])==meta['norm']
    img = flower_data[0]/'images'/'00001.jpg'
    assert safe.predict(img)==pytest.approx(pkl.predict(img), abs=1e-4)

def test_same_seed_same_metrics(trained, flower_data, tmp_path):
    learn = train(flower_data[1], out=tmp_path, size=32, bs=8, epochs=1, pretrained='no', lr=1e-3, seed=7)
    again = train(flower_data[1], out=tmp_path/'b', size=32, bs=8, epochs=1, pretrained='no', lr=1e-3, seed=7)
    a,b = (json.loads((p/'metrics.json').read_text()) for p in (tmp_path, tmp_path/'b'))
    assert a['mae']==pytest.approx(b['mae'], abs=1e-5)
    assert list(learn.dls.valid.items.index)==list(again.dls.valid.items.index)

@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    "A TORCH_HOME whose cache holds a (random) resnet34 state dict under torchvision's file name"
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    f = weights_file('resnet34')
    f.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet34().state_dict(), f)
    return tmp_path/'torch'

def test_pretrained_path_fine_tunes(torch_home, flower_data, tmp_path):
    learn = train(flower_data[1], out=tmp_path, arch='resnet34', size=32, bs=8, epochs=1, freeze_epochs=1, pretrained='yes', lr=1e-3)
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert m['recipe']=='fine_tune' and m['pretrained'] is True
    assert m['norm']=='bn'==json.loads((tmp_path/'model.json').read_text())['norm'] # a pretrained body keeps the norm it learnt with
    assert len(pd.read_csv(tmp_path/'history.csv'))==2 # one frozen epoch, then one unfrozen
    norms = learn.dls.after_batch.fs.filter(lambda t: isinstance(t, Normalize))
    assert len(norms)==1 and torch.allclose(norms[0].mean.flatten().cpu(), torch.tensor(imagenet_stats[0]))

def test_pretrained_runs_fit_the_budget_too(torch_home, flower_data, tmp_path, capsys, short_schedules):
    "Fine-tuning without --epochs: the unfrozen epochs that fit --minutes, timed unfrozen, after the frozen one; the weights of a run told them"
    kw = dict(arch='resnet34', size=32, bs=8, pretrained='yes', lr=1e-3)
    a = train(flower_data[1], out=tmp_path/'a', minutes=1.5, **kw)
    n = json.loads((tmp_path/'a'/'metrics.json').read_text())['epochs']
    assert f"{n} epochs fit 1.5 minutes" in capsys.readouterr().out and len(pd.read_csv(tmp_path/'a'/'history.csv'))==n+1
    b = train(flower_data[1], out=tmp_path/'b', epochs=n, **kw)
    wa,wb = a.model.state_dict(),b.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

def test_a_damaged_imagenet_file_is_named(torch_home, flower_data, tmp_path):
    "A web page saved as the weights, as a download behind a proxy leaves it: torch's traceback named neither the file nor what to do"
    weights_file('resnet34').write_text('<html>Access denied</html>')
    with pytest.raises(FlowersError, match=re.escape(f"ImageNet weights {weights_file('resnet34')} can't be loaded") + '.*Delete it to download it again'):
        train(flower_data[1], out=tmp_path/'run', arch='resnet34', size=32, epochs=1, pretrained='auto')
    assert not (tmp_path/'run').exists()

def test_weights_file(flower_data, tmp_path):
    "A ResNet trained on 10 classes gives its body (its classifier of another size was refused as not fitting)"
    w = tmp_path/'body.pth'
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(sd, w)
    train(flower_data[1], out=tmp_path/'run', arch='resnet18', size=32, bs=8, epochs=1, weights=w, lr=1e-3)
    assert json.loads((tmp_path/'run'/'metrics.json').read_text())['recipe']=='fine_tune'

def test_ibn_asked_with_weights_starts_from_them(flower_data, tmp_path):
    "--norm ibn with a body's weights: each IBN starts from the batch norm it replaces, and both formats rebuild it"
    from flowers.ibn import IBN
    from flowers.predict import load_counter
    w = tmp_path/'body.pth'
    sd = torchvision.models.resnet18().state_dict()
    for k in sd:
        if '.bn1.' in k and 'num_batches' not in k: sd[k] = torch.rand_like(sd[k]) + .5
    torch.save(sd, w)
    learn = train(flower_data[1], out=tmp_path/'run', size=32, bs=8, epochs=1, freeze_epochs=0, weights=w, lr=1e-3, norm='ibn')
    ibn = learn.model[0][4][0].bn1
    assert isinstance(ibn, IBN) and json.loads((tmp_path/'run'/'model.json').read_text())['norm']=='ibn'
    safe,pkl = load_counter(tmp_path/'run'),load_counter(tmp_path/'run'/'export.pkl')
    img = flower_data[0]/'images'/'00000.jpg'
    assert isinstance(safe.model[0][4][0].bn1, IBN) and safe.predict(img)==pytest.approx(pkl.predict(img), abs=1e-4)
    assert load_learner_count(tmp_path/'run'/'export.pkl', img)==pytest.approx(pkl.predict(img), abs=1e-3) # and plain `load_learner`

def test_ibn_from_batch_norm():
    "An IBN made from a batch norm: its batch-norm half is that norm's, and its instance-norm half keeps its scale and shift"
    from flowers.ibn import IBN
    bn = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean): t.uniform_(-1, 1)
        bn.running_var.uniform_(.5, 2)
    bn.eval(); ibn = IBN.from_bn(bn).eval()
    x = torch.randn(3, 8, 6, 6)*4 + 2
    y = ibn(x)
    assert torch.allclose(y[:, 4:], bn(x)[:, 4:], atol=1e-5)
    assert torch.allclose(y[:, :4].mean((2,3)), bn.bias[:4].expand(3, 4), atol=1e-4) # each image's own statistics taken out
    assert torch.allclose(y[:, :4].std((2,3), correction=0), bn.weight[:4].abs().expand(3, 4), atol=1e-3)
    one = torch.randn(2, 8, 1, 1) # a window of a few pixels is one pixel by layer1: torch's instance norm refused it
    assert torch.allclose(ibn(one)[:, :4], bn.bias[:4].view(1, 4, 1, 1).expand(2, 4, 1, 1)) and torch.allclose(ibn(one)[:, 4:], bn(one)[:, 4:])

def _bad_weights(kind):
    sd = (torchvision.models.resnet34 if kind=='resnet34' else torchvision.models.resnet18)().state_dict()
    if kind=='nan': sd['layer1.0.conv1.weight'][0] = float('nan')
    return sd

@pytest.mark.parametrize('kind,msg', [('resnet34', 'has 36 tensors a resnet18 lacks (e.g. layer1.2.bn1.bias); are they another architecture'), # were loaded unsaid
                                      ('nan', 'layer1.0.conv1.weight holds NaN or infinite values'), # trained to NaN, said as a learning rate's fault
                                      ('empty', 'not a PyTorch state dict (EOFError)')])
def test_weights_that_do_not_fit_are_refused(flower_data, tmp_path, kind, msg):
    w = tmp_path/'body.pth'
    if kind=='empty': w.write_bytes(b'')
    else: torch.save(_bad_weights(kind), w)
    with pytest.raises(FlowersError, match=re.escape(msg)): train(flower_data[1], out=tmp_path/'run', size=32, epochs=1, weights=w)
    assert not (tmp_path/'run').exists()

def test_pretrained_yes_without_weights_exits_2(flower_data, tmp_path):
    r = run_cli('--data', flower_data[0], '--out', tmp_path/'run', '--pretrained', 'yes', env={'TORCH_HOME': str(tmp_path/'th')})
    assert r.returncode==2 and 'Traceback' not in r.stderr
    assert 'resnet18-f37072fd.pth is not in' in r.stderr and str(tmp_path/'th'/'hub'/'checkpoints') in r.stderr # the default arch's file

def test_pretrained_auto_warns_and_trains_from_random(flower_data, tmp_path):
    with pytest.warns(UserWarning, match='Training from random init instead'):
        os.environ['TORCH_HOME'] = str(tmp_path/'th')
        try: train(flower_data[1], out=tmp_path, size=32, bs=8, epochs=1, lr=1e-3)
        finally: del os.environ['TORCH_HOME']
    assert json.loads((tmp_path/'metrics.json').read_text())['recipe']=='fit_one_cycle'

@pytest.mark.parametrize('kw,msg', [
    (dict(arch='vgg99'), "unknown --arch 'vgg99'"),
    (dict(pretrained='maybe'), '--pretrained must be auto, yes or no'),
    (dict(loss='cubic'), "unknown --loss 'cubic'"),
    (dict(norm='gn'), "unknown --norm 'gn'; choose one of ibn, bn"),
    (dict(method='crop'), "method must be 'squish' or 'pad'"),
    (dict(weights='nope.pth'), '--weights nope.pth: file not found'),
    (dict(lr='fast'), "--lr must be a number or 'find', not 'fast'"),
    (dict(lr='-1'), '--lr -1 is not a usable learning rate'),
    (dict(precision='fp8'), 'precision must be auto, fp32, bf16, fp16'),
    (dict(seed=2**70), f'--seed {2**70}: must be a whole number from 0 to 4294967295'), # torch's overflow traceback, after the data were read
    pytest.param(dict(precision='fp16'), 'fp16 needs a CUDA GPU', marks=pytest.mark.skipif(torch.cuda.is_available(), reason='fp16 trains on CUDA')),
])
def test_bad_flags_are_refused(flower_data, tmp_path, kw, msg):
    "In-process, as the CLI passes them (each CLI run costs seconds of imports; its exit code 2 is tested below)"
    with pytest.raises(FlowersError, match=re.escape(msg)): train(flower_data[1], out=tmp_path/'run', **{**dict(pretrained='no', epochs=1, size=32), **kw})
    assert not (tmp_path/'run').exists()

def test_unknown_flag_exits_2(tmp_path):
    r = run_cli('--epochz', '3')
    assert r.returncode==2 and 'unrecognized arguments: --epochz' in r.stderr

@pytest.mark.parametrize('module,args,code', [('flowers.train', ['--epochs', '0'], 2), ('flowers.train', ['--resume', '.'], 2),
                                              ('flowers.train', ['--minutes', '0'], 2), ('flowers.train', ['--minutes', 'inf'], 2),
                                              ('flowers.train', ['--pretrained', 'maybe'], 2),
                                              ('flowers.train', ['--help'], 0), ('flowers.synth', ['--help'], 0),
                                              ('flowers.predict', ['--help'], 0), ('flowers.predict', ['nomodel', '.'], 2),
                                              ('flowers.predict', ['nomodel', '.', '--tile', '4'], 2)])
def test_command_lines_answer_before_torch_loads(tmp_path, module, args, code):
    "A typo, or --help, costs no wait: torch and fastai (~10 s of imports) load only for work that needs them"
    run = (f"import runpy, sys\nsys.argv = ['{module}', *{args!r}]\ntry: runpy.run_module('{module}', run_name='__main__')\n"
           "except SystemExit as e: print('exit', e.code, 'torch' in sys.modules, 'fastai' in sys.modules)")
    r = subprocess.run([sys.executable, '-c', run], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.stdout.splitlines()[-1]==f'exit {code} False False', r.stdout + r.stderr

def test_help_states_the_schedules_defaults():
    "`--help` is `train`'s docments, written by hand: they once said 30 epochs after the schedule became 36"
    from fastcore.docments import docments
    from flowers.settings import SCHEDULES
    doc,(fp32,fast) = docments(train),(SCHEDULES['fp32'],SCHEDULES['fast'])
    for k in ('epochs', 'size', 'bs'): assert f"{fp32[k]} in fp32, {fast[k]} in bf16" in doc[k], k
    assert f"{SCHEDULES['gpu']['size']} on a GPU" in doc['size'] and f"{SCHEDULES['gpu']['stem']} on a GPU" in doc['stem']
    assert f"{fast['stem']} in bf16" in doc['stem'] and f"{fast['size']} in bf16 (--stem {fast['stem']})" in doc['size']
    lr = lambda x: f"{x:.0e}".replace('e-0', 'e-') # 3e-3, as the docments write it
    assert f"{lr(fp32['lr'])} in fp32, {lr(fast['lr'])} in bf16" in doc['lr']

def test_bad_data_exits_2(tmp_path, flower_data):
    r = run_cli('--data', tmp_path/'missing', '--out', tmp_path/'run')
    assert r.returncode==2 and 'no such file or folder' in r.stderr and 'Traceback' not in r.stderr
    (tmp_path/'counts.csv').write_text('image,count\n00000.jpg,many\n')
    r = run_cli('--data', tmp_path, '--img-dir', flower_data[0]/'images', '--out', tmp_path/'run')
    assert r.returncode==2 and "line 2: count 'many' is not a number" in r.stderr and 'Traceback' not in r.stderr
