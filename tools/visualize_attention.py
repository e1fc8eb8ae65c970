"""Where a trained detector looks: attention pictures of one image.

    python tools/visualize_attention.py --checkpoint outputs/demo/checkpoint.pth image.jpg --output pictures/

DETR: ``<name>_decoder_attention.png`` and ``<name>_encoder_attention.png``, the two figures of the
official notebook ``detr_attention.ipynb``; Deformable DETR and DINO: ``<name>_sampling_points.png``,
where each detected object's query samples (``visualize`` lists them). The weights are captured by
forward hooks for this one pass, so normal inference keeps its fused kernels; the official notebook
calls the attention with ``need_weights=True`` instead, and draws with matplotlib.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as ``python tools/visualize_attention.py``
    import _repo_root  # noqa: F401

from tools.arguments import add_model_arguments  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Attention pictures of DETR, Deformable DETR and DINO on one image.")
    add_model_arguments(parser)
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--output", default=".", help="folder for the pictures (default: the current one)")
    parser.add_argument("--threshold", type=float, default=0.5, help="objects whose score reaches it are drawn")
    parser.add_argument("--max_objects", type=int, default=6)
    parser.add_argument("--points", nargs="+", default=None, metavar="X,Y",
                        help="DETR encoder figure: reference points in pixels (default: centres of the detections)")  # fmt: skip
    return parser


if __name__ == "__main__":
    get_parser().parse_args()  # --help and bad arguments answered before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from models.ops.ms_deform_attn_pytorch import level_sizes  # noqa: E402
from tools import drawing  # noqa: E402
from tools.inference import (  # noqa: E402
    batch_images,
    class_names,
    core_model,
    eval_transform,
    is_deformable,
    load_from_arguments,
    prepare_output_folder,
    read_image,
    refuse_overwriting_inputs,
    run_command,
    save_png,
)

# --------------------------------------------------------------------------------------------
# Capturing attention with hooks
# --------------------------------------------------------------------------------------------

_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")


def mha_weights(
    module: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
) -> Tensor:
    """The attention weights ``module`` computes for these inputs, averaged over heads:
    ``softmax(Q K^T / sqrt(d) + masks)`` with Q, K projected by its own parameters. Recomputed from
    the hooked module's inputs because inference runs attention with ``need_weights=False`` (fused
    kernels), which returns no weights.
    ``query [L, B, E]``, ``key [S, B, E]`` (``[B, L, E]``, ``[B, S, E]`` if ``batch_first``),
    ``key_padding_mask [B, S]`` (True = ignored) -> ``[B, L, S]``."""
    if module.bias_k is not None:
        raise NotImplementedError("mha_weights: add_bias_kv is not supported")
    if module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    e, h = module.embed_dim, module.num_heads
    d = e // h
    if module._qkv_same_embed_dim:
        w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e : 2 * e]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    b_q, b_k = (
        (None, None) if module.in_proj_bias is None else (module.in_proj_bias[:e], module.in_proj_bias[e : 2 * e])
    )
    length, batch, _ = query.shape
    source = key.shape[0]
    q = F.linear(query.float(), w_q.float(), None if b_q is None else b_q.float())
    k = F.linear(key.float(), w_k.float(), None if b_k is None else b_k.float())
    q = q.reshape(length, batch, h, d).permute(1, 2, 0, 3)  # [B, H, L, d]
    k = k.reshape(source, batch, h, d).permute(1, 2, 0, 3)  # [B, H, S, d]
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # [B, H, L, S]
    if attn_mask is not None:
        mask = attn_mask.view(batch, h, length, source) if attn_mask.dim() == 3 else attn_mask
        logits = logits.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
    return logits.softmax(-1).mean(1)


@dataclass
class DetrAttention:
    """One forward pass of DETR with its last layers' attention (batch ``B``, queries ``Q``,
    feature map ``h x w``)."""

    outputs: dict[str, Any]
    decoder: Tensor  # [B, Q, h*w]: last decoder layer's cross-attention, averaged over heads
    encoder: Tensor  # [B, h*w, h*w]: last encoder layer's self-attention, averaged over heads
    feature_size: tuple[int, int]  # (h, w) of the feature map the transformer attends over


def _hook_mha(module: nn.MultiheadAttention, store: dict[str, Tensor], name: str) -> Any:
    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = dict(zip(_MHA_ARGS, args), **kwargs)
        store[name] = mha_weights(
            mod, bound["query"], bound["key"], bound.get("key_padding_mask"), bound.get("attn_mask")
        ).detach()

    return module.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def capture_detr_attention(model: nn.Module, samples: Any) -> DetrAttention:
    """Run DETR (or panoptic DETR) on ``samples`` with hooks on the last encoder and decoder
    layers' attention and on ``input_proj`` (for the feature map size); the hooks are removed
    afterwards."""
    core = core_model(model)
    store: dict[str, Any] = {}
    handles = [
        _hook_mha(core.transformer.decoder.layers[-1].multihead_attn, store, "decoder"),
        _hook_mha(core.transformer.encoder.layers[-1].self_attn, store, "encoder"),
        core.input_proj.register_forward_hook(lambda m, i, o: store.__setitem__("size", tuple(o.shape[-2:]))),
    ]
    try:
        outputs = model(samples)
    finally:
        for handle in handles:
            handle.remove()
    return DetrAttention(outputs, store["decoder"], store["encoder"], store["size"])


@dataclass
class DeformableSampling:
    """One forward pass of Deformable DETR with where one decoder layer's deformable
    cross-attention sampled (batch ``B``, queries ``Q``, heads ``H``, levels ``L``, points ``P``)."""

    outputs: dict[str, Any]
    locations: Tensor  # [B, Q, H, L, P, 2]: (x, y) in [0, 1] of each level's (padded) map
    weights: Tensor  # [B, Q, H, L, P]: attention weights (sum to 1 over L and P)
    reference_points: Tensor  # [B, Q, L, 2 or 4]: as the layer received them
    spatial_shapes: Tensor  # [L, 2]: (h, w) of each level


def msda_sampling(
    module: nn.Module, offsets: Tensor, logits: Tensor, reference_points: Tensor, spatial_shapes: Tensor
) -> tuple[Tensor, Tensor]:
    """``MSDeformAttn``'s sampling locations and weights from the outputs of its
    ``sampling_offsets`` (``[B, Q, H*L*P*2]``) and ``attention_weights`` (``[B, Q, H*L*P]``)
    projections and its ``reference_points [B, Q, L, 2 or 4]``, as its forward computes them
    -> ``[B, Q, H, L, P, 2]``, ``[B, Q, H, L, P]``."""
    n, q = offsets.shape[:2]
    h, lv, p = module.n_heads, module.n_levels, module.n_points
    offsets = offsets.float().view(n, q, h, lv, p, 2)
    weights = logits.float().view(n, q, h, lv * p).softmax(-1).view(n, q, h, lv, p)
    ref = reference_points.float()
    if ref.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets)
        locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
        locations = ref[:, :, None, :, None, :2] + offsets / p * ref[:, :, None, :, None, 2:] * 0.5
    return locations, weights


@torch.no_grad()
def capture_deformable_sampling(model: nn.Module, samples: Any, layer: int = -1) -> DeformableSampling:
    """Run Deformable DETR or DINO on ``samples`` with hooks on decoder layer ``layer``'s ``MSDeformAttn``
    (its inputs, and the outputs of its offset and weight projections); hooks removed afterwards."""
    attn = core_model(model).transformer.decoder.layers[layer].cross_attn
    store: dict[str, Any] = {}

    def keep_inputs(mod: nn.Module, args: tuple) -> None:
        store["reference_points"] = args[1].detach()
        store["spatial_shapes"] = torch.as_tensor(level_sizes(args[3]), dtype=torch.long, device=args[1].device)

    handles = [
        attn.register_forward_pre_hook(keep_inputs),
        attn.sampling_offsets.register_forward_hook(lambda m, i, o: store.__setitem__("offsets", o.detach())),
        attn.attention_weights.register_forward_hook(lambda m, i, o: store.__setitem__("logits", o.detach())),
    ]
    try:
        outputs = model(samples)
    finally:
        for handle in handles:
            handle.remove()
    locations, weights = msda_sampling(
        attn, store["offsets"], store["logits"], store["reference_points"], store["spatial_shapes"]
    )
    return DeformableSampling(outputs, locations, weights, store["reference_points"], store["spatial_shapes"])


def detected_queries(outputs: dict[str, Tensor], deformable: bool, threshold: float, max_objects: int,
                     index: int = 0) -> list[tuple[int, int, float]]:  # fmt: skip
    """``(query, class, score)`` of image ``index``'s detections, best first: queries whose best
    class (softmax without no-object for DETR, sigmoid for Deformable DETR) scores at least
    ``threshold``; if none does, the ``min(3, max_objects)`` best (so that there is something to see)."""
    logits = outputs["pred_logits"][index].float()
    prob = logits.sigmoid() if deformable else logits.softmax(-1)[:, :-1]
    scores, labels = prob.max(-1)
    order = scores.argsort(descending=True).tolist()
    kept = [q for q in order if scores[q] >= threshold][:max_objects] or order[: min(3, max_objects)]
    return [(q, int(labels[q]), float(scores[q])) for q in kept]


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def _box_pixels(outputs: dict[str, Tensor], query: int, width: int, height: int, index: int = 0) -> list[float]:
    cx, cy, w, h = outputs["pred_boxes"][index, query].float().tolist()
    return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]


def _overlay(image: Image.Image, values: np.ndarray) -> Image.Image:
    """A heat map of ``values [h, w]`` over a dimmed grey version of ``image`` (same size)."""
    grey = image.convert("L").convert("RGB")
    return Image.blend(grey, drawing.heat_map(values, image.size), 0.7)


def _panel_image(image: Image.Image, panel_side: int) -> Image.Image:
    """``image`` scaled so that its longer side is ``panel_side`` (small images enlarged)."""
    k = panel_side / max(image.size)
    return image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.BICUBIC)


def decoder_attention_figure(image: Image.Image, att: DetrAttention, queries: list[tuple[int, int, float]],
                             names: dict[int, str], panel_side: int = 360) -> Image.Image:  # fmt: skip
    """Per object: the image with its box, beside its decoder cross-attention map over the image."""
    base = _panel_image(image, panel_side)
    size = drawing.font_size_for(2 * panel_side, panel_side)
    h, w = att.feature_size
    tiles = []
    for q, label, score in queries:
        boxed = base.copy()
        draw = ImageDraw.Draw(boxed)
        box = _box_pixels(att.outputs, q, base.width, base.height)
        draw.rectangle(box, outline=drawing.colour(label), width=max(2, size // 5))
        attention = att.decoder[0, q].reshape(h, w).cpu().numpy()
        heat = _overlay(base, attention)
        ImageDraw.Draw(heat).rectangle(box, outline=(255, 255, 255), width=1)
        pair = drawing.grid([boxed, heat], columns=2, gap=4)
        tiles.append(drawing.titled(pair, f"{names.get(label, f'class {label}')} {score:.2f} (query {q})", size))
    return drawing.grid(tiles, columns=2 if len(tiles) > 1 else 1, gap=12)


def reference_points_for(queries: list[tuple[int, int, float]], outputs: dict[str, Tensor], width: int,
                         height: int, count: int = 4) -> list[tuple[float, float]]:  # fmt: skip
    """Up to ``count`` points (pixels): the centres of the best detections, then image quarters,
    leaving out points closer than a tenth of the image to one already chosen."""
    candidates = [tuple(outputs["pred_boxes"][0, q, :2].float().tolist()) for q, _, _ in queries]
    candidates += [(0.25, 0.25), (0.75, 0.75), (0.75, 0.25), (0.25, 0.75), (0.5, 0.5)]
    points: list[tuple[float, float]] = []
    for cx, cy in candidates:
        if len(points) < count and all(math.hypot(cx - x, cy - y) >= 0.1 for x, y in points):
            points.append((cx, cy))
    return [(x * width, y * height) for x, y in points]


def encoder_attention_figure(image: Image.Image, att: DetrAttention, points: list[tuple[float, float]],
                             panel_side: int = 360) -> Image.Image:  # fmt: skip
    """The image with numbered reference points, then each point's encoder self-attention map."""
    base = _panel_image(image, panel_side)
    k = base.width / image.width
    size = drawing.font_size_for(2 * panel_side, panel_side)
    h, w = att.feature_size
    maps = att.encoder[0].reshape(h, w, h, w).cpu().numpy()
    radius = max(4, size // 3)

    def mark(panel: Image.Image, i: int, x: float, y: float) -> None:
        draw = ImageDraw.Draw(panel)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=drawing.colour(i), outline=(255, 255, 255),
                     width=2)  # fmt: skip
        drawing.draw_label(draw, (x + radius, y - radius), str(i + 1), drawing.colour(i), size, bounds=panel.size)

    marked = base.copy()
    panels = []
    for i, (x, y) in enumerate(points):
        mark(marked, i, x * k, y * k)
        fy = min(h - 1, max(0, int(y / image.height * h)))
        fx = min(w - 1, max(0, int(x / image.width * w)))
        heat = _overlay(base, maps[fy, fx])
        mark(heat, i, x * k, y * k)
        panels.append(drawing.titled(heat, f"point {i + 1} ({x:.0f}, {y:.0f})", size))
    panels.insert(0, drawing.titled(marked, "reference points", size))
    return drawing.grid(panels, columns=3, gap=12)


def sampling_points_figure(image: Image.Image, samp: DeformableSampling, queries: list[tuple[int, int, float]],
                           names: dict[int, str], panel_side: int = 300) -> Image.Image:  # fmt: skip
    """Per object (one row), per feature level (one panel): the points its query samples, one
    colour per head, disc area proportional to the attention weight; reference point as a cross."""
    base = _panel_image(image, panel_side)
    dimmed = Image.blend(base, Image.new("RGB", base.size, (0, 0, 0)), 0.35)
    size = drawing.font_size_for(2 * panel_side, panel_side)
    shapes = samp.spatial_shapes.tolist()
    panels = []
    for q, label, score in queries:
        loc = samp.locations[0, q].cpu()  # [H, L, P, 2]
        wts = samp.weights[0, q].cpu()  # [H, L, P]
        ref = samp.reference_points[0, q].cpu()  # [L, 2 or 4]
        box = _box_pixels(samp.outputs, q, base.width, base.height)
        top = float(wts.max())
        name = names.get(label, f"class {label}")
        for lvl, (fh, fw) in enumerate(shapes):
            panel = dimmed.copy()
            draw = ImageDraw.Draw(panel)
            draw.rectangle(box, outline=drawing.colour(label), width=2)
            heads = sorted(range(loc.shape[0]), key=lambda hd: float(wts[hd, lvl].max()))
            for hd in heads:
                for pt in range(loc.shape[2]):
                    x, y = float(loc[hd, lvl, pt, 0]) * base.width, float(loc[hd, lvl, pt, 1]) * base.height
                    r = 1.5 + 0.03 * panel_side * math.sqrt(float(wts[hd, lvl, pt]) / top)
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=drawing.colour(hd), outline=(0, 0, 0))
            rx, ry = float(ref[lvl, 0]) * base.width, float(ref[lvl, 1]) * base.height
            arm = max(5, size // 2)
            for dx, dy in ((arm, 0), (0, arm)):
                draw.line([rx - dx, ry - dy, rx + dx, ry + dy], fill=(255, 255, 255), width=3)
                draw.line([rx - dx, ry - dy, rx + dx, ry + dy], fill=(0, 0, 0), width=1)
            share = float(wts[:, lvl].sum() / wts.sum())
            title = f"{name} {score:.2f}, level {lvl + 1} ({fh}x{fw}): {share:.0%}"
            panels.append(drawing.titled(panel, title, max(11, size - 2)))
    return drawing.grid(panels, columns=len(shapes), gap=10)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_points(points: list[str] | None) -> list[tuple[float, float]] | None:
    if points is None:
        return None
    parsed = []
    for p in points:
        try:
            x, y = (float(v) for v in p.split(","))
        except ValueError as e:
            raise ValueError(f"--points: expected X,Y in pixels, got '{p}'") from e
        parsed.append((x, y))
    return parsed


def visualize(args: argparse.Namespace) -> list[Path]:
    """Run the command; returns the pictures written.

    DETR:

    * ``<name>_decoder_attention.png``: for each detected object, the image with its box beside the
      last decoder layer's cross-attention of its query over the image (averaged over heads);
    * ``<name>_encoder_attention.png``: the last encoder layer's self-attention of a few reference
      points (the centres of the best detections, or ``--points x,y ...`` in pixels) over the image.

    Deformable DETR and DINO: ``<name>_sampling_points.png``: for each detected object, one panel per feature
    level with the points its query samples in the last decoder layer (one colour per head, area
    proportional to the attention weight), its reference point (cross) and its box.
    """
    points = _parse_points(args.points)
    image = read_image(args.image)
    out = Path(args.output)
    prepare_output_folder(out)
    loaded = load_from_arguments(args)
    names = class_names(loaded)
    samples, _ = batch_images([image], eval_transform(loaded.args))
    samples = samples.to(loaded.args.device)
    stem = Path(args.image).stem
    deformable = is_deformable(loaded.model)
    kinds = ("sampling_points",) if deformable else ("decoder_attention", "encoder_attention")
    refuse_overwriting_inputs([Path(args.image)], [out / f"{stem}_{kind}.png" for kind in kinds])
    written = []
    if deformable:
        samp = capture_deformable_sampling(loaded.model, samples)
        queries = detected_queries(samp.outputs, True, args.threshold, args.max_objects)
        written.append(
            save_png(sampling_points_figure(image, samp, queries, names), out / f"{stem}_sampling_points.png")
        )
    else:
        att = capture_detr_attention(loaded.model, samples)
        queries = detected_queries(att.outputs, False, args.threshold, args.max_objects)
        figure = decoder_attention_figure(image, att, queries, names)
        written.append(save_png(figure, out / f"{stem}_decoder_attention.png"))
        points = points or reference_points_for(queries, att.outputs, image.width, image.height)
        written.append(save_png(encoder_attention_figure(image, att, points), out / f"{stem}_encoder_attention.png"))
    best = ", ".join(f"{names.get(c, f'class {c}')} {s:.2f}" for _, c, s in queries)
    if queries and queries[0][2] < args.threshold:
        print(f"note: no object scores {args.threshold} or more; showing the best: {best}")
    else:
        print(f"{len(queries)} object(s): {best}")
    for path in written:
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    return run_command(visualize, get_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
