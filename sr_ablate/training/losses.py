"""Training losses beyond torch's own: VGG54 perceptual loss and a weighted sum of terms.

Inputs are SR output and ground truth, (B, C, H, W) in [0, 1] with C = 3 or 1. The VGG net
lives inside the loss module (``.to(device)`` moves it; it is never among the SR model's
parameters) and is frozen.

VGG weights are torchvision's ImageNet VGG19 state dict ``vgg19-dcbb9e9d.pth``, loaded by key;
torchvision itself is not needed. Never random weights: a missing file is a UserError.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sr_ablate import UserError
from sr_ablate.core.digest import sha256_file
from sr_ablate.models.vgg19 import (
    CONV_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_FILE,
    VGG19_URL,
    VGG19Features,
)


def _weights_file(weights: str | None) -> Path:
    """The VGG19 weights file: ``weights``, else the torch hub cache (downloading when online)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"loss.weights={weights}: no such file; give the path of "
                            f"{VGG19_FILE} ({VGG19_URL})")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    if not path.is_file():
        try:
            torch.hub.load_state_dict_from_url(VGG19_URL, check_hash=True, progress=False,
                                               map_location="cpu", weights_only=True)
        except Exception:  # offline, proxy, hash mismatch...: same advice
            pass
    if not path.is_file():
        raise UserError(f"VGG19 weights {VGG19_FILE} are missing and could not be downloaded; "
                        f"put {VGG19_URL} at {path} or set loss.weights=<path>")
    return path


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # (B, 3, H, W)


class VGGLoss(nn.Module):
    """VGG54 perceptual loss: MSE between VGG19 features of SR and ground truth.

    Args:
        layer: conv layer whose output is compared, "conv5_4" (VGG54) or e.g. "conv2_2".
        after_relu: compare features after that conv's ReLU. Default False (before the ReLU,
            as ESRGAN and most SR code do: more signal, no dead units); SRGAN's paper text says
            after the activation, so True reproduces that reading.
        weights: path of torchvision's ``vgg19-dcbb9e9d.pth``; None looks in the torch hub cache
            (``torch.hub.get_dir()/checkpoints``) and downloads there when online.
        weight: factor on the loss.

    ``forward(sr, gt)``: (B, C, H, W) in [0, 1], C = 3 or 1 (repeated to 3); returns a scalar.
    ``tags`` names the weights file and its sha256, for the run record.
    """

    def __init__(self, layer: str = "conv5_4", after_relu: bool = False,
                 weights: str | None = None, weight: float = 1.0):
        super().__init__()
        if layer not in CONV_INDEX:
            raise UserError(f"loss.layer={layer!r} is not a VGG19 conv layer; use one of: "
                            f"{', '.join(CONV_INDEX)}")
        if not 0 < weight < float("inf"):  # NaN fails too
            raise ValueError(f"VGGLoss needs a positive, finite weight, got {weight}")
        path = _weights_file(weights)
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:
            raise UserError(f"{path} cannot be read as a state dict ({type(e).__name__}); "
                            f"use {VGG19_URL}") from None
        if not isinstance(state, dict):
            raise UserError(f"{path} is not a torchvision VGG19 state dict; use {VGG19_URL}")
        self.vgg = VGG19Features(depth=CONV_INDEX[layer] + 1 + int(after_relu))
        self.vgg.load_torchvision(state, str(path))
        self.weight = weight
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.tags = {"loss.vgg_weights": str(path.absolute()), "loss.vgg_sha256": sha256_file(path)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, 512, H/16, W/16) for conv5_4."""
        return self.vgg((_to_rgb(x) - self.mean) / self.std)

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(gt)
        return self.weight * F.mse_loss(self.features(sr), target)


class WeightedSum(nn.Module):
    """``l2 * MSE + l1 * L1 + vgg54 * VGGLoss``; only terms with a non-zero weight are built.

    Args:
        l2, l1, vgg54: weights of the pixel MSE, pixel L1 and VGG feature MSE terms
            (SRGAN's content loss: ``l2=1, vgg54=0.006``).
        vgg_layer, vgg_after_relu, vgg_weights: ``layer``, ``after_relu``, ``weights`` of
            VGGLoss.

    ``last_terms`` holds the detached, unweighted value of each term at the last call
    (tensors, so reading them is the caller's host sync); ``tags`` those of VGGLoss if used.
    """

    def __init__(self, l2: float = 0.0, l1: float = 0.0, vgg54: float = 0.0,
                 vgg_layer: str = "conv5_4", vgg_after_relu: bool = False,
                 vgg_weights: str | None = None):
        super().__init__()
        given = {"l2": l2, "l1": l1, "vgg54": vgg54}
        for name, w in given.items():
            if not 0 <= w < float("inf"):  # NaN fails too
                raise ValueError(f"WeightedSum needs a finite {name} weight >= 0, got {w}")
        self.term_weights = {k: float(w) for k, w in given.items() if w}
        if not self.term_weights:
            raise ValueError("WeightedSum needs at least one non-zero weight (l2, l1, vgg54)")
        self.vgg = None
        if "vgg54" in self.term_weights:
            try:
                self.vgg = VGGLoss(layer=vgg_layer, after_relu=vgg_after_relu, weights=vgg_weights)
            except UserError as e:  # name this config's keys in the advice
                msg = str(e).replace("loss.weights=", "loss.vgg_weights=")
                raise UserError(msg.replace("loss.layer=", "loss.vgg_layer=")) from None
        self.tags: dict[str, str] = dict(self.vgg.tags) if self.vgg is not None else {}
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        terms = {}
        if "l2" in self.term_weights:
            terms["l2"] = F.mse_loss(sr, gt)
        if "l1" in self.term_weights:
            terms["l1"] = F.l1_loss(sr, gt)
        if self.vgg is not None:
            terms["vgg54"] = self.vgg(sr, gt)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return sum(self.term_weights[k] * v for k, v in terms.items())
