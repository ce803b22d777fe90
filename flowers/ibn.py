"""IBN-a (Pan et al., ECCV 2018): the first norm of each residual block half instance norm, so that a ground's or a light's style is taken out."""
import torch, torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from .settings import NORMS

__all__ = ['NORMS', 'IBN', 'to_ibn', 'body_norm']

class IBN(nn.Module):
    "Instance norm on the first half of the channels, batch norm on the rest"
    # instance norm takes each image's own contrast and colour out of its channels; batch norm keeps what tells images apart
    def __init__(self, planes, # Channels
                 ratio=.5, # Share given instance norm
                ):
        super().__init__()
        self.half = int(planes*ratio)
        self.IN,self.BN = nn.InstanceNorm2d(self.half, affine=True),nn.BatchNorm2d(planes - self.half)

    @classmethod
    def from_bn(cls, bn:nn.BatchNorm2d):
        "An `IBN` in place of `bn`, starting from its weights: its scale and shift on both halves, its statistics on the batch-norm half"
        ibn = cls(bn.num_features).to(bn.weight.device)
        h = ibn.half
        with torch.no_grad():
            ibn.IN.weight.copy_(bn.weight[:h]); ibn.IN.bias.copy_(bn.bias[:h])
            for k in ('weight','bias','running_mean','running_var'): getattr(ibn.BN, k).copy_(getattr(bn, k)[h:])
        return ibn

    def forward(self, x):
        a,b = torch.split(x, [self.half, x.size(1)-self.half], 1)
        # one pixel (a window of a few pixels at an image's edge) is all its own mean: normalised to 0, as with more; torch refuses it
        a = self.IN(a.contiguous()) if x.shape[-2]*x.shape[-1] > 1 else self.IN.bias.view(1, -1, 1, 1).to(a.dtype).expand_as(a)
        return torch.cat([a, self.BN(b.contiguous())], 1)

def to_ibn(body:nn.Sequential) -> nn.Sequential:
    "`body` (a cut torchvision ResNet) with `IBN` as the first norm of every block of layer1 to layer3, as IBN-a has it; in place"
    # layer4 keeps batch norm, as in the paper: the last stage's features tell images apart, and its style is their content
    for stage in list(body.children())[4:7]:
        for block in stage.children():
            if isinstance(block, (BasicBlock, Bottleneck)) and isinstance(block.bn1, nn.BatchNorm2d): block.bn1 = IBN.from_bn(block.bn1)
    return body

def body_norm(body) -> str:
    "'ibn' where `body` has `IBN` norms, else 'bn'"
    return 'ibn' if any(isinstance(m, IBN) for m in body.modules()) else 'bn'
