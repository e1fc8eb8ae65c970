"""DETR for segmentation (Carion et al., 2020, section 4.4): ``DETRsegm`` wraps a (possibly frozen)
``DETR`` and adds ``bbox_attention`` (``MHAttentionMap``: attention maps of each query over the
encoder memory) and ``mask_head`` (``MaskHeadSmallConv``: an FPN-style decoder over layer3-1 giving
one mask logit map per query at stride 4); ``PostProcessSegm`` and ``PostProcessPanoptic`` turn
its outputs into instance masks and COCO panoptic PNGs.

The official modules, parameter names and numbers, made to work with other backbones, small models
and classes missing from ``is_thing_map``.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from models.losses import dice_loss, sigmoid_focal_loss  # noqa: F401  (re-exported for official imports)
from util import box_ops
from util.misc import NestedTensor, refuse_torchscript, to_nested_tensor
from util.panoptic import id2rgb, rgb2id  # noqa: F401  (re-exported: official names)

__all__ = [
    "DETRsegm",
    "MHAttentionMap",
    "MaskHeadSmallConv",
    "PostProcessPanoptic",
    "PostProcessSegm",
    "dice_loss",
    "id2rgb",
    "rgb2id",
    "sigmoid_focal_loss",
]


def _expand(tensor: Tensor, length: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B * length, C, H, W]`` (each image repeated ``length`` times)."""
    return tensor.unsqueeze(1).repeat(1, int(length), 1, 1, 1).flatten(0, 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    """``gcd(8, channels)`` groups (officially always 8: identical for every official configuration,
    ``hidden_dim >= 128`` with 8 heads, and small models, ``hidden_dim`` 32 or 64, no longer fail)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class DETRsegm(nn.Module):
    """``detr`` + ``bbox_attention`` + ``mask_head``: adds ``pred_masks [B, Q, H/4, W/4]`` (mask
    logits at the stride of layer1) to DETR's outputs. The backbone must return layer1-4.

    ``freeze_detr``: the wrapped DETR's parameters get ``requires_grad=False`` (the official second
    stage of panoptic training, where only the mask head learns). The FPN widths are read off the
    backbone (``feature_channels``; officially ResNet-50's ``[1024, 512, 256]``), so ResNet-18/34
    backbones work too.
    """

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error

    def __init__(self, detr: nn.Module, freeze_detr: bool = False) -> None:
        super().__init__()
        self.detr = detr
        self.freeze_detr = freeze_detr
        if freeze_detr:
            for p in self.parameters():
                p.requires_grad_(False)
        hidden_dim, nheads = detr.transformer.d_model, detr.transformer.nhead
        channels = list(getattr(detr.backbone, "feature_channels", [256, 512, 1024, 2048]))
        if len(channels) < 4:
            raise ValueError(
                f"DETRsegm needs a backbone returning layer1-4 (4 feature maps), got {len(channels)}; "
                "build the backbone with return_layers=('layer1', 'layer2', 'layer3', 'layer4')"
            )
        self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
        self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, channels[2::-1][:3], hidden_dim)

    def train(self, mode: bool = True) -> DETRsegm:
        """As ``nn.Module.train``; with ``freeze_detr``, batch-norm layers of the DETR stay in eval
        mode so that their running statistics are frozen too (only matters for learning
        ``BatchNorm2d``, e.g. ``--train_backbone_all``; the official backbone's are frozen)."""
        super().train(mode)
        if self.freeze_detr:
            for m in self.detr.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, samples: NestedTensor | Tensor | list[Tensor]) -> dict:
        """``samples``: images ``[B, 3, H, W]`` + padding mask ``[B, H, W]``.

        Returns DETR's ``pred_logits [B, Q, K+1]``, ``pred_boxes [B, Q, 4]`` (and
        ``aux_outputs``) plus ``pred_masks [B, Q, H4, W4]`` (logits, H4 = height of layer1's map).
        """
        samples = to_nested_tensor(samples)
        detr = self.detr
        features, pos = detr.backbone(samples)
        bs = features[-1].tensors.shape[0]
        src, mask = features[-1].decompose()
        src_proj = detr.input_proj(src)
        hs, memory = detr.transformer(src_proj, mask, detr.query_embed.weight, pos[-1])

        outputs_class = detr.class_embed(hs)
        outputs_coord = detr.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if detr.aux_loss:
            out["aux_outputs"] = detr._set_aux_loss(outputs_class, outputs_coord)

        bbox_mask = self.bbox_attention(hs[-1], memory, mask=mask)
        seg_masks = self.mask_head(src_proj, bbox_mask, [features[2].tensors, features[1].tensors, features[0].tensors])
        out["pred_masks"] = seg_masks.view(bs, detr.num_queries, seg_masks.shape[-2], seg_masks.shape[-1])
        return out


class MaskHeadSmallConv(nn.Module):
    """Convolutional mask decoder: 3x3 conv + GroupNorm + ReLU blocks, upsampled three times
    (nearest) and summed with 1x1-adapted FPN features (``adapter1..3``), then ``out_lay`` to one
    channel. Widths: ``dim, context_dim / 2, / 4, / 8, / 16``.
    """

    def __init__(self, dim: int, fpn_dims: list[int], context_dim: int) -> None:
        super().__init__()
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        if min(inter_dims) < 1:
            raise ValueError(f"MaskHeadSmallConv: hidden_dim {context_dim} too small (needs >= 16)")
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = _group_norm(dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = _group_norm(inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = _group_norm(inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = _group_norm(inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = _group_norm(inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.dim = dim
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor, bbox_mask: Tensor, fpns: list[Tensor]) -> Tensor:
        """``x [B, hidden, H, W]`` (projected layer4), ``bbox_mask [B, Q, nheads, H, W]``, ``fpns``:
        layer3, layer2, layer1 maps ``[B, C_i, H_i, W_i]`` -> mask logits ``[B * Q, 1, H1, W1]``."""
        x = torch.cat([_expand(x, bbox_mask.shape[1]), bbox_mask.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        x = F.relu(self.gn2(self.lay2(x)))
        for adapter, lay, gn, fpn in (
            (self.adapter1, self.lay3, self.gn3, fpns[0]),
            (self.adapter2, self.lay4, self.gn4, fpns[1]),
            (self.adapter3, self.lay5, self.gn5, fpns[2]),
        ):
            cur_fpn = adapter(fpn)
            if cur_fpn.size(0) != x.size(0):
                cur_fpn = _expand(cur_fpn, x.size(0) // cur_fpn.size(0))
            x = cur_fpn + F.interpolate(x, size=cur_fpn.shape[-2:], mode="nearest")
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


class MHAttentionMap(nn.Module):
    """Attention weights only (no values): per query and head, a softmax map over the encoder
    memory. As officially, the softmax runs jointly over heads and positions."""

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=bias)
        nn.init.zeros_(self.k_linear.bias)
        nn.init.zeros_(self.q_linear.bias)
        nn.init.xavier_uniform_(self.k_linear.weight)
        nn.init.xavier_uniform_(self.q_linear.weight)
        self.normalize_fact = float(hidden_dim / self.num_heads) ** -0.5

    def forward(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """``q [B, Q, query_dim]``, ``k [B, query_dim, H, W]``, ``mask [B, H, W]`` (True = padding)
        -> weights ``[B, Q, nheads, H, W]``."""
        q = self.q_linear(q)
        k = F.conv2d(k, self.k_linear.weight.unsqueeze(-1).unsqueeze(-1), self.k_linear.bias)
        head_dim = self.hidden_dim // self.num_heads
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, head_dim)
        kh = k.view(k.shape[0], self.num_heads, head_dim, k.shape[-2], k.shape[-1])
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask.unsqueeze(1).unsqueeze(1), float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).view(weights.size())
        return self.dropout(weights)


class PostProcessSegm(nn.Module):
    """Adds binary ``masks [Q, 1, H, W]`` (uint8, original image size) to the box results."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    @torch.no_grad()
    def forward(
        self, results: list[dict], outputs: dict, orig_target_sizes: Tensor, max_target_sizes: Tensor
    ) -> list[dict]:
        """``orig_target_sizes [B, 2]``: original (h, w); ``max_target_sizes [B, 2]``: (h, w) of each
        image as fed to the network (before padding). Masks are upsampled to the padded batch size,
        thresholded, cropped to each image and resized (nearest) to its original size."""
        if len(orig_target_sizes) != len(max_target_sizes):
            raise ValueError("orig_target_sizes and max_target_sizes must have the same length")
        max_h, max_w = max_target_sizes.max(0)[0].tolist()
        masks = outputs["pred_masks"]
        masks = F.interpolate(masks, size=(max_h, max_w), mode="bilinear", align_corners=False)
        masks = (masks.sigmoid() > self.threshold).cpu()
        for i, (cur_mask, t, tt) in enumerate(zip(masks, max_target_sizes, orig_target_sizes)):
            img_h, img_w = int(t[0]), int(t[1])
            m = cur_mask[:, :img_h, :img_w].unsqueeze(1).float()
            results[i]["masks"] = F.interpolate(m, size=tuple(tt.tolist()), mode="nearest").byte()
        return results


def _ids_and_areas(
    masks: Tensor, size: tuple[int, int], final_size: tuple[int, int], stuff_equiv: dict[int, list[int]] | None
) -> tuple[list[int], Image.Image]:
    """Per-pixel argmax over ``masks [N, h * w]`` (segment id = query index), stuff queries of one
    class merged into the first when ``stuff_equiv`` is given, resized (nearest) to ``final_size``.
    Returns each segment's area at the final size and the id image (RGB-encoded)."""
    h, w = size
    n = masks.shape[0]
    if n == 0:
        m_id = torch.zeros((h, w), dtype=torch.long, device=masks.device)
    else:
        m_id = masks.transpose(0, 1).softmax(-1).argmax(-1).view(h, w)  # softmax kept: same ties as officially
    for equiv in (stuff_equiv or {}).values():
        for eq_id in equiv[1:]:
            m_id.masked_fill_(m_id.eq(eq_id), equiv[0])
    final_h, final_w = final_size
    seg_img = Image.fromarray(id2rgb(m_id.cpu().numpy()))
    seg_img = seg_img.resize(size=(final_w, final_h), resample=Image.NEAREST)
    counts = np.bincount(rgb2id(np.asarray(seg_img)).ravel(), minlength=n)
    return [int(counts[i]) for i in range(n)], seg_img


class PostProcessPanoptic(nn.Module):
    """Panoptic segmentation in the COCO panoptic format: per image a PNG (``png_string``, segment
    ids encoded as ``R + 256 G + 256^2 B``) and ``segments_info`` (``id``, ``isthing``,
    ``category_id``, ``area``).

    ``is_thing_map``: ``{category_id: bool}`` for every class the model can predict.
    ``threshold``: minimum class probability for a query to be kept.

    The official algorithm step by step: keep confident non-"no-object" queries, bilinear
    upsampling, per-pixel argmax, merging of stuff queries of the same class, iterative removal of
    segments of at most 4 pixels, nearest resizing to the original size, segment id = index of the
    kept query (the first is 0). One addition: queries whose class is not in ``is_thing_map`` are
    dropped like "no-object" ones (the official code raises ``KeyError`` there, or writes a
    category the evaluation rejects), so a map derived from the data set's categories always yields
    evaluable output.
    """

    def __init__(self, is_thing_map: dict[int, bool], threshold: float = 0.85) -> None:
        super().__init__()
        self.threshold = threshold
        self.is_thing_map = is_thing_map

    def _is_thing(self, cat: int) -> bool:
        return bool(self.is_thing_map[cat])

    @torch.no_grad()
    def forward(
        self, outputs: dict, processed_sizes: Tensor | list, target_sizes: Tensor | list | None = None
    ) -> list[dict]:
        """``outputs``: ``pred_logits [B, Q, K+1]``, ``pred_masks [B, Q, h, w]``, ``pred_boxes``;
        ``processed_sizes [B, 2]``: (h, w) of each image as fed to the network (masks are upsampled
        to it); ``target_sizes [B, 2]``: (h, w) of the final PNG (default: ``processed_sizes``)."""
        if target_sizes is None:
            target_sizes = processed_sizes
        out_logits, raw_masks, raw_boxes = outputs["pred_logits"], outputs["pred_masks"], outputs["pred_boxes"]
        if not len(processed_sizes) == len(target_sizes) == len(out_logits) == len(raw_masks):
            raise ValueError("PostProcessPanoptic: batch sizes of outputs, processed_sizes and target_sizes differ")
        no_object = out_logits.shape[-1] - 1
        preds = []
        for cur_logits, cur_masks, cur_boxes, size, target_size in zip(
            out_logits, raw_masks, raw_boxes, processed_sizes, target_sizes
        ):
            scores, labels = cur_logits.softmax(-1).max(-1)
            known = torch.tensor([int(c) in self.is_thing_map for c in labels.tolist()], dtype=torch.bool)
            keep = labels.ne(no_object) & (scores > self.threshold) & known.to(labels.device)
            cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], cur_masks[keep]
            h, w = (int(v) for v in size)
            cur_masks = F.interpolate(cur_masks[:, None], size=(h, w), mode="bilinear", align_corners=False)
            cur_masks = cur_masks.squeeze(1).flatten(1)  # [N, h * w]
            _ = box_ops.box_cxcywh_to_xyxy(cur_boxes[keep])  # computed officially, unused
            final_h, final_w = (int(v) for v in target_size)

            stuff_equiv: dict[int, list[int]] = defaultdict(list)
            for k, label in enumerate(cur_classes.tolist()):
                if not self._is_thing(label):
                    stuff_equiv[label].append(k)

            area, seg_img = _ids_and_areas(cur_masks, (h, w), (final_h, final_w), stuff_equiv)
            # Drop segments of at most 4 pixels (incl. merged-away stuff duplicates) until none are left.
            while cur_classes.numel() > 0:
                small = torch.as_tensor([a <= 4 for a in area], dtype=torch.bool, device=cur_classes.device)
                if not bool(small.any()):
                    break
                cur_scores, cur_classes, cur_masks = cur_scores[~small], cur_classes[~small], cur_masks[~small]
                area, seg_img = _ids_and_areas(cur_masks, (h, w), (final_h, final_w), None)

            segments_info = [
                {"id": i, "isthing": self._is_thing(int(c)), "category_id": int(c), "area": a}
                for i, (c, a) in enumerate(zip(cur_classes.tolist(), area))
            ]
            with io.BytesIO() as buf:
                seg_img.save(buf, format="PNG")
                preds.append({"png_string": buf.getvalue(), "segments_info": segments_info})
        return preds
