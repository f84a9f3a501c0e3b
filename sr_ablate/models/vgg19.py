"""VGG19's convolutional features, as torchvision lays them out: not an SR model, the net the
VGG54 perceptual loss (``training.losses``) compares images in. Defined here so that its
layer names (``CONV_INDEX``) are known without the loss, e.g. to the config's domains."""
from __future__ import annotations

import torch
from torch import nn

from sr_ablate import UserError

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision's cfgs["E"]: conv3x3 widths, "M" = MaxPool2d(2, 2)
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_indices() -> dict[str, int]:
    """{"conv1_1": 0, "conv1_2": 2, ..., "conv5_4": 34}: index of each conv in ``features``."""
    out, index, block, conv = {}, 0, 1, 1
    for v in VGG19_CFG:
        if v == "M":
            index, block, conv = index + 1, block + 1, 1
        else:
            out[f"conv{block}_{conv}"] = index
            index, conv = index + 2, conv + 1  # conv, ReLU
    return out


CONV_INDEX = _conv_indices()


class VGG19Features(nn.Sequential):
    """torchvision's ``vgg19().features`` cut after ``depth`` layers, same module indices.

    Index 34 is conv5_4 and 35 its ReLU, so ``depth=35`` ends before that ReLU and ``depth=36``
    after it. Frozen (no gradients to its parameters) and always in eval mode.
    """

    def __init__(self, depth: int = 36):
        layers: list[nn.Module] = []
        in_ch = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        super().__init__(*layers[:depth])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)

    def load_torchvision(self, state: dict, source: str) -> None:
        """Load the ``features.*`` entries of a torchvision VGG19 state dict (others ignored)."""
        own = self.state_dict()
        picked = {k: state.get(f"features.{k}") for k in own}
        bad = [k for k, v in picked.items()
               if not isinstance(v, torch.Tensor) or v.shape != own[k].shape]
        if bad:
            raise UserError(f"{source} is not a torchvision VGG19 state dict (features.{bad[0]} "
                            f"missing or of the wrong shape); use {VGG19_URL}")
        self.load_state_dict(picked)
