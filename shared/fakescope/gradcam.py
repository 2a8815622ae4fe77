"""GradCAM (Selvaraju et al., 2017) on the detector's last convolutional stage, and its overlay.

As in the CIFAKE paper: forward and backward hooks on the target stage, channel weights from the
spatially averaged gradients of the target logit, ReLU of the weighted sum, normalised to [0, 1],
resized to the image, a colormap, blended over the image.

When the target stage's output goes straight into global average pooling and a linear head (the
FreqNet-ResNet variants whose frequency branch merges before the last stage), the gradient of a
logit with respect to that output is the class's head weight divided by the number of cells, the
same at every cell. GradCAM's channel weights are then known without a backward pass, and
:func:`linear_head_cam` computes the identical map from the forward features alone (Selvaraju et
al. note this: GradCAM generalises CAM). :class:`GradCAM` with its hooks stays the reference and
the path for any other head; a test holds the two equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The overlay is drawn by torch-free code the API shares (fakescope.overlay); re-exported here.
from fakescope.overlay import colormap_jet, overlay_png

__all__ = ["GradCAM", "colormap_jet", "linear_head_cam", "linear_head_grid", "overlay_png"]


class GradCAM:
    """Class-activation maps for a batch, from hooks on ``target`` (a sub-module of ``model``)."""

    def __init__(self, model: nn.Module, target: nn.Module) -> None:
        self.model = model
        self.target = target
        # The last call's maps before resizing: ``(B, h, w)`` at the target's cells, ReLU'd, unscaled.
        self.last_grids: torch.Tensor | None = None

    def __call__(
        self, x: torch.Tensor, class_idx: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits, cams)``; ``cams`` is ``(B, H, W)`` in [0, 1] at the input's size.

        Args:
            x: the preprocessed batch.
            class_idx: the class whose evidence to show, one for all or one per image; by default
                each image's predicted class.
        """
        acts: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []

        # A def, not a lambda: torch's hook argument type (`_grad_t`) is not a type alias mypy can use.
        def keep_grad(
            _m: nn.Module, _gi: tuple[torch.Tensor, ...] | torch.Tensor, go: tuple[torch.Tensor, ...] | torch.Tensor
        ) -> None:
            grads.append(go[0])

        h_fwd = self.target.register_forward_hook(lambda _m, _i, out: acts.append(out))
        h_bwd = self.target.register_full_backward_hook(keep_grad)
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # so the backward hook fires even with frozen weights
                logits = self.model(x)
                if class_idx is None:
                    idx = logits.argmax(1)
                else:
                    idx = torch.as_tensor(class_idx, device=logits.device).expand(logits.shape[0])
                self.model.zero_grad(set_to_none=True)
                logits.gather(1, idx[:, None]).sum().backward()
        finally:
            h_fwd.remove()
            h_bwd.remove()
        a, g = acts[0].detach().float(), grads[0].detach().float()
        weights = g.mean(dim=(2, 3), keepdim=True)
        self.last_grids = F.relu((weights * a).sum(dim=1))
        return logits.detach(), _normalised((weights * a).sum(dim=1, keepdim=True), x.shape[-2:])


def linear_head_grid(features: torch.Tensor, head_weight: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
    """:func:`linear_head_cam` before resizing and scaling: ``(B, h, w)`` at the features' cells, ReLU'd."""
    a = features.detach().float()
    weights = head_weight.detach().float()[class_idx] / (a.shape[-2] * a.shape[-1])
    return F.relu((weights[:, :, None, None] * a).sum(dim=1))


def linear_head_cam(
    features: torch.Tensor, head_weight: torch.Tensor, class_idx: torch.Tensor, size: tuple[int, int] | torch.Size
) -> torch.Tensor:
    """GradCAM maps without a backward pass, for features followed by global average pooling and a linear head.

    Args:
        features: ``(B, C, h, w)`` output of the target stage.
        head_weight: ``(classes, C)`` weight of the linear head.
        class_idx: ``(B,)`` the class whose evidence to show for each image.
        size: the input's ``(H, W)``.

    Returns:
        ``(B, H, W)`` maps in [0, 1], equal to :class:`GradCAM`'s.
    """
    a = features.detach().float()
    # d logit_c / d a_k(i, j) = W[c, k] / (h * w) at every cell: GradCAM's spatial mean of it is itself.
    weights = head_weight.detach().float()[class_idx] / (a.shape[-2] * a.shape[-1])
    return _normalised((weights[:, :, None, None] * a).sum(dim=1, keepdim=True), size)


def _normalised(cam: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """ReLU, resized to ``size``, each map scaled to [0, 1]: ``(B, 1, h, w)`` to ``(B, H, W)``."""
    cam = F.relu(cam)
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (cam - lo) / (hi - lo).clamp_min(1e-8)
