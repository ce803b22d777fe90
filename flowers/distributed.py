"""Data-parallel training on several processes (`torchrun`, `accelerate launch`): PyTorch's DDP, on CUDA (nccl) or the CPU (gloo)."""
import contextlib, os, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from fastai.vision.all import *
from fastai.distributed import DistributedDL, DistributedTrainer
from .errors import FlowersError

__all__ = ['local_procs', 'check_gpus', 'setup_ddp', 'teardown_ddp', 'ShardDL', 'DDPTrainer', 'ddp_ctx', 'broadcast_obj', 'any_rank', 'alone']

def local_procs() -> int:
    "Training processes on this machine: the launcher's `LOCAL_WORLD_SIZE` (torchrun's, and Accelerate's through it), 1 when launched alone"
    return int(os.environ.get('LOCAL_WORLD_SIZE', 1)) if num_distrib() > 1 else 1

def check_gpus(procs, # Training processes on this machine (`LOCAL_WORLD_SIZE`)
               gpus, # CUDA GPUs a process sees
              ):
    "Raise unless each of `procs` processes can have a GPU of its own"
    # the process without one failed in CUDA's 'invalid device ordinal', and torchrun's traceback buried it
    if procs > gpus: raise FlowersError(f"{procs} training processes on this machine but {gpus} CUDA GPU{'s'*(gpus!=1)}: each process needs one of its own. "
                                        f"Start {gpus} (torchrun --nproc_per_node {gpus}), or train on the CPU with CUDA_VISIBLE_DEVICES=''")

def setup_ddp() -> bool:
    "Join the process group that the launcher describes in the environment (`WORLD_SIZE`, `RANK`, ...); False when launched alone"
    if num_distrib() <= 1: return False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            check_gpus(local_procs(), torch.cuda.device_count())
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    return True

def teardown_ddp():
    "Leave the process group, if in one"
    if dist.is_initialized(): dist.destroy_process_group()

def _comm_device():
    "Where collective ops want their tensors: nccl only takes CUDA ones, gloo CPU ones"
    return torch.device('cuda', torch.cuda.current_device()) if dist.get_backend()=='nccl' else torch.device('cpu')

def broadcast_obj(o, src=0):
    "`o` of rank `src`, in every process (itself when not distributed)"
    if not dist.is_initialized(): return o
    objs = [o]; dist.broadcast_object_list(objs, src); return objs[0]

def any_rank(flag) -> bool:
    "Is `flag` true in any process? All processes must ask together"
    if not dist.is_initialized(): return bool(flag)
    t = torch.tensor([float(bool(flag))], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

class ShardDL(DistributedDL):
    "fastai's `DistributedDL` (each process gets its shard of every epoch), broadcasting on the backend's device so gloo works"
    def _broadcast(self, t, rank):
        t = torch.tensor(t, dtype=torch.long, device=_comm_device())
        dist.broadcast(t, rank)
        return t.cpu().tolist()

class DDPTrainer(DistributedTrainer):
    "fastai's `DistributedTrainer` with PyTorch's `DistributedDataParallel` instead of Accelerate's, so that it runs on the CPU too"
    def __init__(self): pass # no Accelerator; per-process BatchNorm: SyncBatchNorm is CUDA-only and would end up in export.pkl
    def before_fit(self):
        ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
        self.learn.model = DistributedDataParallel(self.model, device_ids=ids)
        self.old_dls = list(self.dls)
        self.learn.dls.loaders = [self._wrap_dl(dl) for dl in self.dls]
        said = self.learn.logger is not noop # not in a fit that logs nothing: the timing of `flowers.budget` said it twice
        if rank_distrib(): self.learn.logger = noop
        if said: print(f'rank {rank_distrib()} of {num_distrib()}: {len(self.learn.dls.train)} training batches an epoch', flush=True)
    def _wrap_dl(self, dl): return dl if isinstance(dl, DistributedDL) else ShardDL(dl, device=self.dls.device)

@contextlib.contextmanager
def ddp_ctx(learn):
    "`learn` trained data-parallel inside, when launched on several processes; unchanged otherwise"
    if not dist.is_initialized(): yield learn; return
    learn.add_cb(DDPTrainer())
    try: yield learn
    finally: learn.remove_cb(DDPTrainer)

@contextlib.contextmanager
def alone():
    "Work of rank 0 only (reports, export): fastai must not wait inside for the other processes to gather results"
    old = os.environ.get('WORLD_SIZE')
    os.environ['WORLD_SIZE'] = '1' # fastai's `num_distrib` reads it
    try: yield
    finally:
        if old is None: os.environ.pop('WORLD_SIZE', None)
        else: os.environ['WORLD_SIZE'] = old
