"""Deformable DETR's transformer (Zhu et al., 2021): ``DeformableTransformer``, a multi-scale
deformable-attention encoder and a decoder with deformable cross-attention, optional iterative
box refinement and two-stage proposals; ``build_deformable_transformer`` builds it from a
``DeformableTransformerConfig`` (``attn_impl`` picks the attention's implementation, ``models.ops``).

The official modules, parameter names and numbers (official checkpoints load with ``strict=True``),
exportable with ``torch.export`` for any image size and usable with any ``d_model``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.ops import MSDeformAttn
from models.ops.ms_deform_attn_pytorch import LevelSizes, SpatialShapes, level_sizes
from models.transformer import get_activation_fn, get_clones


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[eps, 1 - eps]`` (as the official util)."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


def encoder_output_proposals(
    memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: SpatialShapes
) -> tuple[Tensor, Tensor]:
    """One proposal per encoder token: its pixel centre and a size ``0.05 * 2**level`` (two-stage
    Deformable DETR and DINO).

    ``memory [B, S, C]``, ``memory_padding_mask [B, S]``, ``spatial_shapes [L, 2]`` ->
    ``output_memory [B, S, C]`` (zeroed on padding and invalid proposals) and
    ``output_proposals [B, S, 4]`` (inverse-sigmoid cxcywh, ``inf`` on padding and on proposals too
    close to the border)."""
    n, _, _ = memory.shape
    proposals = []
    cur = 0
    for lvl, (h, w) in enumerate(level_sizes(spatial_shapes)):
        mask_flatten_ = memory_padding_mask[:, cur : cur + h * w].view(n, h, w, 1)
        valid_h = torch.sum(~mask_flatten_[:, :, 0, 0], 1)
        valid_w = torch.sum(~mask_flatten_[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=memory.device),  # = linspace(0, h - 1, h), exportable
            torch.arange(w, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(n, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
        cur += h * w
    output_proposals = torch.cat(proposals, 1)
    output_proposals_valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
    output_proposals = output_proposals.masked_fill(~output_proposals_valid, float("inf"))

    output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
    output_memory = output_memory.masked_fill(~output_proposals_valid, 0.0)
    return output_memory, output_proposals


def get_valid_ratio(mask: Tensor) -> Tensor:
    """Fraction of each feature map that is not padding: ``mask [B, H, W]`` -> ``[B, 2]`` (w, h)."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def flatten_levels(
    srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor], level_embed: Tensor
) -> tuple[Tensor, Tensor, Tensor, LevelSizes, Tensor, Tensor]:
    """The feature levels as one token sequence: ``srcs``/``pos_embeds`` per level ``[B, C, H_l, W_l]``,
    ``masks`` ``[B, H_l, W_l]``, ``level_embed [L, C]`` -> ``src [B, S, C]``, ``mask [B, S]``,
    ``pos [B, S, C]`` (with the level embedding), the level sizes, ``level_start_index [L]`` and
    ``valid_ratios [B, L, 2]``."""
    src_flatten = []
    mask_flatten = []
    lvl_pos_embed_flatten = []
    spatial_shapes_list = []
    for lvl, (src, mask, pos_embed) in enumerate(zip(srcs, masks, pos_embeds)):
        _, _, h, w = src.shape
        spatial_shapes_list.append((h, w))
        src_flatten.append(src.flatten(2).transpose(1, 2))
        mask_flatten.append(mask.flatten(1))
        pos_embed = pos_embed.flatten(2).transpose(1, 2)
        lvl_pos_embed_flatten.append(pos_embed + level_embed[lvl].view(1, 1, -1))
    src_flatten_t = torch.cat(src_flatten, 1)
    # The level sizes as a list of (h, w) holding the official [L, 2] tensor too (tensors are still
    # accepted): no device-to-host copy per layer, and sizes that stay symbolic under torch.export.
    spatial_shapes = LevelSizes(spatial_shapes_list, device=src_flatten_t.device)
    sizes = spatial_shapes.tensor
    level_start_index = torch.cat((sizes.new_zeros((1,)), sizes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([get_valid_ratio(m) for m in masks], 1)
    return (
        src_flatten_t, torch.cat(mask_flatten, 1), torch.cat(lvl_pos_embed_flatten, 1), spatial_shapes,
        level_start_index, valid_ratios,
    )  # fmt: skip


def reset_deformable_parameters(module: nn.Module) -> None:
    """Xavier-uniform for every matrix of ``module``, then the deformable attentions' own
    initialisation (Deformable DETR's and DINO's transformers)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for m in module.modules():
        if isinstance(m, MSDeformAttn):
            m._reset_parameters()


def validate_transformer_settings(cfg: Any) -> None:
    """``ValueError`` naming the flag for settings of a deformable transformer config (Deformable
    DETR's or DINO's) it cannot be built with."""
    if cfg.hidden_dim % cfg.nheads:
        raise ValueError(f"--hidden_dim ({cfg.hidden_dim}) must be divisible by --nheads ({cfg.nheads})")
    for name in ("num_feature_levels", "num_queries", "enc_n_points", "dec_n_points", "dec_layers"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then the FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=attn_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = get_activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    @staticmethod
    def with_pos_embed(tensor: Tensor, pos: Tensor | None) -> Tensor:
        return tensor if pos is None else tensor + pos

    def forward_ffn(self, src: Tensor) -> Tensor:
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))

    def forward(
        self,
        src: Tensor,
        pos: Tensor | None,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``src``, ``pos [B, S, C]``, ``reference_points [B, S, L, 2]`` -> ``[B, S, C]``."""
        src2 = self.self_attn(
            self.with_pos_embed(src, pos), reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(src2))
        return self.forward_ffn(src)


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.layers = get_clones(encoder_layer, num_layers)
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(spatial_shapes: SpatialShapes, valid_ratios: Tensor, device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised by the valid (unpadded) size and then mapped
        to each level's frame: ``spatial_shapes [L, 2]``, ``valid_ratios [B, L, 2]``
        -> ``[B, S, L, 2]`` (x, y)."""
        reference_points_list = []
        for lvl, (h, w) in enumerate(level_sizes(spatial_shapes)):
            ref_y, ref_x = torch.meshgrid(
                # = the official linspace(0.5, h - 0.5, h), whose step count torch.export would fix
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            reference_points_list.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(reference_points_list, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(
        self,
        src: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``src [B, S, C]`` (all levels flattened) -> memory ``[B, S, C]``."""
        output = src
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, device=src.device)
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output


class DeformableTransformerDecoderLayer(nn.Module):
    """Post-norm layer: self-attention among queries, deformable cross-attention, FFN."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=attn_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = get_activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    @staticmethod
    def with_pos_embed(tensor: Tensor, pos: Tensor | None) -> Tensor:
        return tensor if pos is None else tensor + pos

    def forward_ffn(self, tgt: Tensor) -> Tensor:
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor | None,
        reference_points: Tensor,
        src: Tensor,
        src_spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        src_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``tgt``, ``query_pos [B, Q, C]``, ``reference_points [B, Q, L, 2 or 4]``, memory
        ``src [B, S, C]`` -> ``[B, Q, C]``. ``self_attn_mask [Q, Q]``: True where a query may not
        attend (DINO's denoising groups)."""
        q = k = self.with_pos_embed(tgt, query_pos)
        tgt2 = self.self_attn(q.transpose(0, 1), k.transpose(0, 1), tgt.transpose(0, 1), attn_mask=self_attn_mask)[0]
        tgt2 = tgt2.transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn(
            self.with_pos_embed(tgt, query_pos),
            reference_points,
            src,
            src_spatial_shapes,
            level_start_index,
            src_padding_mask,
        )
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return self.forward_ffn(tgt)


class DeformableTransformerDecoder(nn.Module):
    """Stack of decoder layers. ``bbox_embed`` (iterative refinement) and ``class_embed``
    (two-stage) are set by ``DeformableDETR``, as officially, so they appear under
    ``transformer.decoder`` in the state dict."""

    def __init__(self, decoder_layer: nn.Module, num_layers: int, return_intermediate: bool = False) -> None:
        super().__init__()
        self.layers = get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.return_intermediate = return_intermediate
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        src: Tensor,
        src_spatial_shapes: SpatialShapes,
        src_level_start_index: Tensor,
        src_valid_ratios: Tensor,
        query_pos: Tensor | None = None,
        src_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``tgt [B, Q, C]``, ``reference_points [B, Q, 2 or 4]`` (normalised to the valid area)
        -> hidden states ``[n_layers, B, Q, C]`` and reference points ``[n_layers, B, Q, 2 or 4]``
        (the last layer only without ``return_intermediate``). ``self_attn_mask [Q, Q]``: True where
        a query may not attend (denoising groups)."""
        output = tgt
        intermediate = []
        intermediate_reference_points = []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                reference_points_input = (
                    reference_points[:, :, None] * torch.cat([src_valid_ratios, src_valid_ratios], -1)[:, None]
                )
            elif reference_points.shape[-1] == 2:
                reference_points_input = reference_points[:, :, None] * src_valid_ratios[:, None]
            else:
                raise ValueError(f"reference_points must end in 2 or 4, got {tuple(reference_points.shape)}")
            output = layer(
                output, query_pos, reference_points_input, src, src_spatial_shapes, src_level_start_index,
                src_padding_mask, self_attn_mask,
            )  # fmt: skip

            if self.bbox_embed is not None:  # iterative bounding-box refinement
                tmp = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_reference_points = (tmp + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_reference_points = torch.cat(
                        [tmp[..., :2] + inverse_sigmoid(reference_points), tmp[..., 2:]], -1
                    ).sigmoid()
                reference_points = new_reference_points.detach()

            if self.return_intermediate:
                intermediate.append(output)
                intermediate_reference_points.append(reference_points)

        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_reference_points)
        return output, reference_points


class DeformableTransformer(nn.Module):
    """Flattens the feature levels, encodes them, and decodes ``num_queries`` object queries
    (learned, or the top-scoring encoder proposals in the two-stage variant)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        return_intermediate_dec: bool = True,
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals

        encoder_layer = DeformableTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, enc_n_points, attn_impl
        )
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableTransformerDecoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, dec_n_points, attn_impl
        )
        self.decoder = DeformableTransformerDecoder(decoder_layer, num_decoder_layers, return_intermediate_dec)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))

        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        reset_deformable_parameters(self)
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def get_proposal_pos_embed(self, proposals: Tensor) -> Tensor:
        """Sine embedding of proposal boxes: ``[B, K, 4]`` (unactivated) -> ``[B, K, 2 * d_model]``,
        with ``d_model // 2`` frequencies per coordinate (the official code hard-codes 128, which
        only fits ``d_model = 256``; identical there)."""
        num_pos_feats = self.d_model // 2
        temperature = 10000
        scale = 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        proposals = proposals.sigmoid() * scale
        pos = proposals[:, :, :, None] / dim_t  # [B, K, 4, F]
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(
        self, memory: Tensor, memory_padding_mask: Tensor, spatial_shapes: SpatialShapes
    ) -> tuple[Tensor, Tensor]:
        """``encoder_output_proposals``, the memory then through ``enc_output`` + ``enc_output_norm``."""
        output_memory, output_proposals = encoder_output_proposals(memory, memory_padding_mask, spatial_shapes)
        return self.enc_output_norm(self.enc_output(output_memory)), output_proposals

    @staticmethod
    def get_valid_ratio(mask: Tensor) -> Tensor:
        """Fraction of each feature map that is not padding: ``mask [B, H, W]`` -> ``[B, 2]`` (w, h)."""
        return get_valid_ratio(mask)

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
        dn: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """``srcs``/``pos_embeds``: per level ``[B, C, H_l, W_l]``; ``masks``: ``[B, H_l, W_l]``;
        ``query_embed [Q, 2C]`` (position and content halves; None in two-stage); ``dn``: denoising
        queries decoded before the ``Q`` others, ``(content [B, P, C], position [B, P, C], boxes
        [B, P, 4], self-attention mask [P + Q, P + Q])``, then ``Q`` reads ``P + Q`` below.

        Returns ``hs [n_dec, B, Q, C]``, ``init_reference [B, Q, 2 or 4]``,
        ``inter_references [n_dec, B, Q, 2 or 4]`` and, in two-stage, the encoder proposals'
        ``enc_outputs_class [B, S, K]`` and ``enc_outputs_coord_unact [B, S, 4]`` (else None)."""
        if not self.two_stage and query_embed is None:
            raise ValueError("DeformableTransformer: query_embed is required unless two_stage")
        src_flatten_t, mask_flatten_t, lvl_pos_embed_flatten_t, spatial_shapes, level_start_index, valid_ratios = (
            flatten_levels(srcs, masks, pos_embeds, self.level_embed)
        )

        memory = self.encoder(
            src_flatten_t, spatial_shapes, level_start_index, valid_ratios, lvl_pos_embed_flatten_t, mask_flatten_t
        )

        bs, _, c = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            if self.decoder.class_embed is None or self.decoder.bbox_embed is None:
                raise RuntimeError("two-stage DeformableTransformer needs decoder.class_embed and decoder.bbox_embed")
            output_memory, output_proposals = self.gen_encoder_output_proposals(memory, mask_flatten_t, spatial_shapes)
            enc_outputs_class = self.decoder.class_embed[self.decoder.num_layers](output_memory)
            enc_outputs_coord_unact = self.decoder.bbox_embed[self.decoder.num_layers](output_memory) + output_proposals
            topk = min(self.two_stage_num_proposals, enc_outputs_class.shape[1])  # officially not clamped
            topk_proposals = torch.topk(enc_outputs_class[..., 0], topk, dim=1)[1]
            topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_proposals.unsqueeze(-1).repeat(1, 1, 4))
            topk_coords_unact = topk_coords_unact.detach()
            reference_points = topk_coords_unact.sigmoid()
            init_reference_out = reference_points
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact)))
            query_pos, tgt = torch.split(pos_trans_out, c, dim=2)
        else:
            assert query_embed is not None
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(bs, -1, -1)
            tgt = tgt.unsqueeze(0).expand(bs, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
            init_reference_out = reference_points

        attn_mask = None
        if dn is not None:
            dn_tgt, dn_pos, dn_boxes, attn_mask = dn
            tgt, query_pos = torch.cat([dn_tgt, tgt], 1), torch.cat([dn_pos, query_pos], 1)
            reference_points = torch.cat([dn_boxes[..., : reference_points.shape[-1]], reference_points], 1)
            init_reference_out = reference_points
            attn_mask = attn_mask[: tgt.shape[1], : tgt.shape[1]]  # fewer proposals than --num_queries (two-stage)
        hs, inter_references = self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask_flatten_t,
            attn_mask,
        )  # fmt: skip
        return hs, init_reference_out, inter_references, enc_outputs_class, enc_outputs_coord_unact


@dataclass
class DeformableTransformerConfig:
    """What ``build_deformable_transformer`` needs (the official flags of the same names).

    The single source of ``num_feature_levels``, ``two_stage`` and ``num_queries`` for Deformable
    DETR (``DeformableDETRConfig`` reads them from here): ``num_queries`` is the number of decoder
    queries, learned or, in two-stage, the number of encoder proposals kept."""

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    num_feature_levels: int = 4
    dec_n_points: int = 4
    enc_n_points: int = 4
    two_stage: bool = False
    num_queries: int = 300
    attn_impl: str = "auto"

    def validate(self) -> None:
        """``ValueError`` naming the flag for values the transformer cannot be built with."""
        validate_transformer_settings(self)


def build_deformable_transformer(cfg: DeformableTransformerConfig) -> DeformableTransformer:
    cfg.validate()
    return DeformableTransformer(
        d_model=cfg.hidden_dim,
        nhead=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        activation="relu",
        return_intermediate_dec=True,
        num_feature_levels=cfg.num_feature_levels,
        dec_n_points=cfg.dec_n_points,
        enc_n_points=cfg.enc_n_points,
        two_stage=cfg.two_stage,
        two_stage_num_proposals=cfg.num_queries,
        attn_impl=cfg.attn_impl,
    )


build_deforamble_transformer = build_deformable_transformer  # the official (misspelled) name
