"""PoseWarper in PyTorch (NCHW), module for module as the official release, for reference
tests and side-by-side benchmarks.

* ``TorchHRNet``: the official ``PoseHighResolutionNet`` (deep-high-resolution-net.pytorch,
  ``lib/models/pose_hrnet.py``) written from torch primitives, parameterised by the
  project's ``HRNetConfig`` (stem width, layer1 depth, module and block counts), so its
  ``state_dict`` keys are those of the official network.
* ``TorchWarpingHead``: the official warping head (``lib/models/pose_hrnet_PoseAgg.py`` of
  facebookresearch/PoseWarper): ``psi`` -> ``num_blocks`` BasicBlocks at ``channels``
  channels (block 0 projects its shortcut with a 1x1 conv + BN) -> per dilation d a 3x3
  offsets conv (dilation d, padding d, no bias, zero init, ``J * 18`` channels) and a 3x3
  deformable conv J -> J (dilation d, padding d, J deformable groups, no bias, identity
  init) of the maps to warp; output the mean over the dilations. BatchNorm momentum 0.1,
  eps 1e-5. Its ``state_dict`` keys are ``posewarper_jax.convert.head_keys.head_torch_keys``
  (official layout).
* ``TorchPoseWarper``: the frozen backbone (eval mode, no gradient) on frames A and B of
  each pair, then the head on ``psi = f_A - f_B`` warping ``f_B``.

The deformable convolution is ``torchvision.ops.deform_conv2d`` (offset layout of the
official CUDA op: channel ``18 g + 2 k`` holds dy, ``18 g + 2 k + 1`` dx, for group g and
tap k = 3 i + j) or, where torchvision is missing, ``deform_conv2d_grid_sample``: the same
operation from ``torch.nn.functional.grid_sample`` (bilinear, zero padding, align_corners),
which matches the CUDA border rule (a corner outside the map counts as 0). ``DEFORM_IMPLS``
names the choices; ``"auto"`` takes torchvision when it imports.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn as tnn

from posewarper_jax.models.hrnet import HRNetConfig

BN_MOMENTUM = 0.1  # torch convention: running = 0.9 running + 0.1 batch
BN_EPS = 1e-5
KERNEL_SIZE = 3
DEFORM_IMPLS = ("auto", "torchvision", "grid_sample")

# Left/right joint pairs of the 17-joint (COCO/PoseTrack) layout, as
# ``posewarper_jax.data.types.FLIP_PAIRS``.
FLIP_PAIRS = ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))

# ----------------------------------------------------------------------------- HRNet


def _conv_bn(cin, cout, k, stride, relu):
    layers = [tnn.Conv2d(cin, cout, k, stride, k // 2, bias=False), tnn.BatchNorm2d(cout)]
    return tnn.Sequential(*layers, *([tnn.ReLU()] if relu else []))


class _TBasic(tnn.Module):
    """ResNet BasicBlock; the shortcut projects when the channel count changes, or always
    with ``project=True`` (block 0 of the warping head)."""

    def __init__(self, cin, planes, project: bool | None = None):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        project = cin != planes if project is None else project
        self.downsample = _conv_bn(cin, planes, 1, 1, False) if project else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TBottleneck(tnn.Module):
    def __init__(self, cin, planes):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(4 * planes)
        self.downsample = _conv_bn(cin, 4 * planes, 1, 1, False) if cin != 4 * planes else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TModule(tnn.Module):
    def __init__(self, ch, num_blocks, multi_scale_output):
        super().__init__()
        n = len(ch)
        self.branches = tnn.ModuleList(
            tnn.Sequential(*[_TBasic(c, c) for _ in range(num_blocks)]) for c in ch
        )
        rows = []
        for i in range(n if multi_scale_output else 1):
            row = []
            for j in range(n):
                if j > i:
                    row.append(
                        tnn.Sequential(
                            tnn.Conv2d(ch[j], ch[i], 1, 1, 0, bias=False),
                            tnn.BatchNorm2d(ch[i]),
                            tnn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:
                    steps = [
                        _conv_bn(ch[j], ch[i] if k == i - j - 1 else ch[j], 3, 2, k < i - j - 1)
                        for k in range(i - j)
                    ]
                    row.append(tnn.Sequential(*steps))
            rows.append(tnn.ModuleList(row))
        self.fuse_layers = tnn.ModuleList(rows)

    def forward(self, xs):
        xs = [b(x) for b, x in zip(self.branches, xs)]
        outs = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            outs.append(torch.relu(y))
        return outs


class TorchHRNet(tnn.Module):
    """The official network's structure and forward, parameterised by an ``HRNetConfig``.

    Input ``[N, 3, H, W]`` normalised RGB; output ``[N, J, H / 4, W / 4]`` heatmaps.
    """

    def __init__(self, cfg: HRNetConfig):
        super().__init__()
        s = cfg.stem_channels
        self.conv1 = tnn.Conv2d(3, s, 3, 2, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(s)
        self.conv2 = tnn.Conv2d(s, s, 3, 2, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(s)
        self.layer1 = tnn.Sequential(
            *[_TBottleneck(s if b == 0 else 4 * s, s) for b in range(cfg.layer1_blocks)]
        )
        pre = [4 * s]
        self.num_branches = []
        for k in range(3):
            cur = [cfg.width * 2**b for b in range(k + 2)]
            trans = []
            for i, c in enumerate(cur):
                if i < len(pre):
                    trans.append(_conv_bn(pre[i], c, 3, 1, True) if c != pre[i] else None)
                else:
                    steps = [
                        _conv_bn(pre[-1], c if j == i - len(pre) else pre[-1], 3, 2, True)
                        for j in range(i + 1 - len(pre))
                    ]
                    trans.append(tnn.Sequential(*steps))
            setattr(self, f"transition{k + 1}", tnn.ModuleList(trans))
            n_mod = cfg.num_modules[k]
            mods = [_TModule(cur, cfg.num_blocks, k < 2 or m < n_mod - 1) for m in range(n_mod)]
            setattr(self, f"stage{k + 2}", tnn.Sequential(*mods))
            self.num_branches.append(len(cur))
            pre = cur
        fk = cfg.final_conv_kernel
        self.final_layer = tnn.Conv2d(cfg.width, cfg.num_joints, fk, 1, 1 if fk == 3 else 0)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for k in range(3):
            trans = getattr(self, f"transition{k + 1}")
            xs = [
                ys[i] if trans[i] is None else trans[i](ys[-1]) for i in range(self.num_branches[k])
            ]
            ys = getattr(self, f"stage{k + 2}")(xs)
        return self.final_layer(ys[0])


def official_init_(model: tnn.Module) -> tnn.Module:
    """HRNet's ``init_weights``: conv weights ~ N(0, 0.001^2), conv biases 0, BN weight 1 and
    bias 0 (BN momentum and eps set to the official 0.1 and 1e-5). Returns ``model``."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, tnn.Conv2d):
                tnn.init.normal_(mod.weight, std=0.001)
                if mod.bias is not None:
                    tnn.init.zeros_(mod.bias)
            elif isinstance(mod, tnn.BatchNorm2d):
                mod.momentum, mod.eps = BN_MOMENTUM, BN_EPS
                tnn.init.ones_(mod.weight)
                tnn.init.zeros_(mod.bias)
    return model


# ----------------------------------------------------------------------------- deformable conv


def torchvision_available() -> bool:
    try:
        import torchvision.ops  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_deform_impl(impl: str = "auto") -> str:
    """``"torchvision"`` or ``"grid_sample"`` for ``impl`` in ``DEFORM_IMPLS``.

    Raises:
      ValueError: for an unknown name.
      ImportError: for ``"torchvision"`` when torchvision cannot be imported.
    """
    if impl not in DEFORM_IMPLS:
        raise ValueError(f"unknown deformable-conv implementation {impl!r}; one of {DEFORM_IMPLS}")
    if impl == "auto":
        return "torchvision" if torchvision_available() else "grid_sample"
    if impl == "torchvision" and not torchvision_available():
        raise ImportError(
            "the warping head's deformable convolution needs torchvision.ops.deform_conv2d, "
            "but torchvision is not importable; install torchvision matching torch "
            f"{torch.__version__}, or use deform_impl='grid_sample' (or 'auto')"
        )
    return impl


def deform_conv2d_grid_sample(x, offset, weight, *, padding: int, dilation: int):
    """``torchvision.ops.deform_conv2d(x, offset, weight, padding=p, dilation=d)`` (stride 1,
    no bias, no mask) from ``F.grid_sample``.

    x ``[N, C, H, W]``; offset ``[N, G * 2 * kh * kw, Ho, Wo]`` (group-major, tap, (dy, dx));
    weight ``[O, C, kh, kw]``. Tap (i, j) of group g at output pixel (y, x) samples channel
    c of group g at ``(y - p + i d + dy, x - p + j d + dx)`` bilinearly, corners outside the
    map counting as 0. Returns ``[N, O, Ho, Wo]``.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    taps = kh * kw
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) + 1
    g = offset.shape[1] // (2 * taps)
    if g * 2 * taps != offset.shape[1] or c % g or tuple(offset.shape[2:]) != (ho, wo):
        raise ValueError(
            f"offset {tuple(offset.shape)} does not fit x {tuple(x.shape)} and a "
            f"{kh}x{kw} kernel (dilation {dilation}, padding {padding})"
        )
    off = offset.float().reshape(n, g, taps, 2, ho, wo)
    dev = x.device
    ii = torch.arange(kh, device=dev).repeat_interleave(kw) * dilation - padding  # [taps]
    jj = torch.arange(kw, device=dev).repeat(kh) * dilation - padding
    ys = torch.arange(ho, device=dev).view(1, 1, 1, ho, 1) + ii.view(1, 1, taps, 1, 1)
    xs = torch.arange(wo, device=dev).view(1, 1, 1, 1, wo) + jj.view(1, 1, taps, 1, 1)
    ys = ys + off[:, :, :, 0]  # [N, G, taps, Ho, Wo]
    xs = xs + off[:, :, :, 1]
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    grid = torch.stack([2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], -1)
    grid = grid.reshape(n * g, taps * ho, wo, 2).to(x.dtype)
    cols = F.grid_sample(
        x.reshape(n * g, c // g, h, w), grid, "bilinear", "zeros", align_corners=True
    )
    cols = cols.reshape(n, c, taps, ho, wo)
    return torch.einsum("nckhw,ock->nohw", cols, weight.reshape(o, c, taps).to(cols.dtype))


class DeformConv(tnn.Module):
    """3x3 deformable conv J -> J without bias, ``weight [J, J, 3, 3]`` identity-initialised
    (the official ``DeformConv(J, J, 3, padding=d, dilation=d, deformable_groups=J)``)."""

    def __init__(self, channels: int, dilation: int, impl: str = "auto"):
        super().__init__()
        self.dilation = dilation
        self.impl = resolve_deform_impl(impl)
        k = KERNEL_SIZE
        weight = torch.zeros(channels, channels, k, k)
        weight[:, :, k // 2, k // 2] = torch.eye(channels)
        self.weight = tnn.Parameter(weight)

    def forward(self, x, offset):
        d = self.dilation
        if self.impl == "torchvision":
            from torchvision.ops import deform_conv2d

            return deform_conv2d(x, offset, self.weight, padding=d, dilation=d)
        return deform_conv2d_grid_sample(x, offset, self.weight, padding=d, dilation=d)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, dilation={self.dilation}, impl={self.impl!r}"


# ----------------------------------------------------------------------------- head


class TorchWarpingHead(tnn.Module):
    """The official warping head (see the module docstring).

    ``forward(psi, maps)``: both ``[N, J, h, w]``; returns the warped maps ``[N, J, h, w]``
    (float32 whatever the autocast: the official op runs the deformable convs in float32).
    At initialisation (zero offsets, identity deformable kernels) it returns ``maps``.

    Args:
      num_joints: J.
      channels: C, width of the offset-feature blocks (128 in the method).
      num_blocks: offset-feature BasicBlocks (20 in the method).
      dilations: one offsets conv and one deformable conv per entry.
      deform_impl: one of ``DEFORM_IMPLS`` (``"torchvision"`` raises ImportError here when
        torchvision is missing).
    """

    def __init__(
        self,
        num_joints: int = 17,
        channels: int = 128,
        num_blocks: int = 20,
        dilations=(3, 6, 12, 18, 24),
        deform_impl: str = "auto",
    ):
        super().__init__()
        self.deform_impl = resolve_deform_impl(deform_impl)
        self.dilations = tuple(dilations)
        self.offset_feats = tnn.Sequential(
            *[
                _TBasic(num_joints if b == 0 else channels, channels, project=b == 0)
                for b in range(num_blocks)
            ]
        )
        k = KERNEL_SIZE
        out = num_joints * 2 * k * k
        # Registration order of the official module: every offsets conv, then every deform conv.
        for i, d in enumerate(self.dilations, start=1):
            setattr(self, f"offsets{i}", tnn.Conv2d(channels, out, k, 1, d, d, bias=False))
        for i, d in enumerate(self.dilations, start=1):
            setattr(self, f"deform_conv{i}", DeformConv(num_joints, d, self.deform_impl))
        official_init_(self.offset_feats)
        with torch.no_grad():
            for i in range(1, len(self.dilations) + 1):
                getattr(self, f"offsets{i}").weight.zero_()

    @classmethod
    def from_config(cls, config, deform_impl: str = "auto") -> TorchWarpingHead:
        """From a ``posewarper_jax.models.warping.WarpingHeadConfig``."""
        return cls(
            config.num_joints, config.channels, config.num_blocks, config.dilations, deform_impl
        )

    def forward(self, psi, maps):
        feats = self.offset_feats(psi)
        n = len(self.dilations)
        # Offsets in the caller's (auto)cast dtype, then float32 for the sampling.
        offsets = [getattr(self, f"offsets{i}")(feats).float() for i in range(1, n + 1)]
        maps = maps.float()
        with torch.autocast(maps.device.type, enabled=False):
            warped = [
                getattr(self, f"deform_conv{i}")(maps, off) for i, off in enumerate(offsets, 1)
            ]
        return torch.stack(warped).mean(0)


# ----------------------------------------------------------------------------- PoseWarper


class TorchPoseWarper(tnn.Module):
    """Frozen HRNet on both frames of each pair plus the trained warping head (stage 2).

    The backbone stays in eval mode (running BN statistics) whatever ``train()`` is called
    with, takes no gradient (``requires_grad=False`` and ``torch.no_grad``), and runs once
    on the ``2 B`` frames of a batch.

    ``forward(frames)``: ``[B, 2, 3, H, W]`` normalised RGB, t=0 frame A, t=1 frame B;
    returns ``head(f_A - f_B, f_B)``, ``[B, J, H / 4, W / 4]`` float32.
    """

    def __init__(self, hrnet_config: HRNetConfig, head: TorchWarpingHead):
        super().__init__()
        self.backbone = official_init_(TorchHRNet(hrnet_config))
        self.backbone.requires_grad_(False)
        self.head = head
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, frames):
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:])
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # a model in channels_last
        with torch.no_grad():
            hm = self.backbone(x)
        hm = hm.float().reshape(b, t, *hm.shape[1:])
        f_a, f_b = hm[:, 0], hm[:, 1]
        return self.head(f_a - f_b, f_b)


def flip_back(heatmaps, flip_pairs=FLIP_PAIRS, shift: bool = True):
    """HRNet's ``flip_back`` plus ``SHIFT_HEATMAP``: heatmaps ``[N, J, h, w]`` of the
    mirrored crop -> the crop's frame (width reversed, left/right channels swapped, moved
    one pixel right with column 0 kept)."""
    perm = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    out = heatmaps.flip(3)[:, perm]
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=3)
    return out


def param_count(model: tnn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
