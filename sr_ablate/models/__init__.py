"""SR architectures: plain ``nn.Module``s whose keyword arguments are the ``model.*`` override keys.

Each model class has ``upsampled_input``: True when it expects the bicubic-enlarged image
(HR size) as input (SRCNN, SRCNNRNN, VDSR), False when it takes the LR image (SRResNet,
ESPCN, EDSR).
"""
from sr_ablate.models.edsr import EDSR
from sr_ablate.models.espcn import ESPCN
from sr_ablate.models.srcnn import SRCNN
from sr_ablate.models.srcnn_rnn import SRCNNRNN
from sr_ablate.models.srresnet import SRResNet
from sr_ablate.models.vdsr import VDSR

# Keys of a ``model`` config node that say where its weights start (model.init: training.init),
# not how the network is built: taken out before the class is called. Here, not in the config
# package, so that loading a trained model (an MLflow Model) needs neither Hydra nor the configs.
START_KEYS = ("init", "init_strict", "init_sha256")

__all__ = ["EDSR", "ESPCN", "SRCNN", "SRCNNRNN", "START_KEYS", "SRResNet", "VDSR"]
