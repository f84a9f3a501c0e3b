"""SR architectures: plain ``nn.Module``s whose keyword arguments are the ``model.*`` override keys.

Each model class has ``upsampled_input``: True when it expects the bicubic-enlarged image
(HR size) as input, False when it takes the LR image.
"""
from sr_ablate.models.srresnet import SRResNet

__all__ = ["SRResNet"]
