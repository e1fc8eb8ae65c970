"""DINO's transformer (Zhang et al., 2023): Deformable DETR's encoder, "mixed" query selection (the
top-scoring encoder proposals give the decoder's anchor boxes, learned embeddings its content) and
a decoder whose query positions come from the anchor boxes, refined layer by layer.

``DINOTransformer`` reuses ``models.deformable_transformer``'s encoder, decoder layer (with the
denoising self-attention mask), level flattening and proposals; ``build_dino_transformer`` builds
it from a ``DINOTransformerConfig``. The official parameter names and numbers (the "standard"
two-stage, ``embed_init_tgt`` path of the official configs); other official variants are absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.deformable_transformer import (
    DeformableTransformerDecoderLayer,
    DeformableTransformerEncoder,
    DeformableTransformerEncoderLayer,
    encoder_output_proposals,
    flatten_levels,
    inverse_sigmoid,
    reset_deformable_parameters,
    validate_transformer_settings,
)
from models.detr import MLP
from models.ops.ms_deform_attn_pytorch import SpatialShapes
from models.transformer import get_clones

DINO_EPS = 1e-3  # DINO's inverse_sigmoid clamp (Deformable DETR's is 1e-5)


def box_sine_embed(boxes: Tensor, d_model: int) -> Tensor:
    """Sine embedding of normalised boxes: ``[B, Q, 4]`` (cx, cy, w, h) -> ``[B, Q, 2 * d_model]`` in
    the order y, x, w, h, ``d_model // 2`` frequencies each (officially 128, i.e. ``d_model = 256``)."""
    num_feats = d_model // 2
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = boxes[..., None] * (2 * math.pi) / dim_t  # [B, Q, 4, F]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos[..., 1, :], pos[..., 0, :], pos[..., 2, :], pos[..., 3, :]), dim=-1)


class DINODecoder(nn.Module):
    """Deformable decoder layers whose query position is ``ref_point_head`` of the anchor boxes'
    sine embedding; after each layer the shared ``bbox_embed`` refines the anchors (detached for the
    next layer, kept attached in the returned references: look forward twice). ``bbox_embed`` and
    ``class_embed`` are set by ``DINO``, as officially."""

    def __init__(self, decoder_layer: nn.Module, num_layers: int, d_model: int) -> None:
        super().__init__()
        self.layers = get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.d_model = d_model
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def forward(
        self,
        tgt: Tensor,
        refpoints_unsigmoid: Tensor,
        memory: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        memory_padding_mask: Tensor,
        self_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``tgt [B, Q, C]``, ``refpoints_unsigmoid [B, Q, 4]`` -> normalised hidden states
        ``[n_layers, B, Q, C]`` and anchors ``[n_layers + 1, B, Q, 4]`` (the first: the input ones)."""
        if self.bbox_embed is None:
            raise RuntimeError("DINODecoder needs bbox_embed (set by DINO)")
        output = tgt
        reference_points = refpoints_unsigmoid.sigmoid()
        references = [reference_points]
        intermediate = []
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # [B, 1, L, 4]
        for lid, layer in enumerate(self.layers):
            reference_points_input = reference_points[:, :, None] * ratios
            query_pos = self.ref_point_head(box_sine_embed(reference_points_input[:, :, 0, :], self.d_model))
            output = layer(
                output, query_pos, reference_points_input, memory, spatial_shapes, level_start_index,
                memory_padding_mask, self_attn_mask,
            )  # fmt: skip
            new_reference_points = (
                self.bbox_embed[lid](output) + inverse_sigmoid(reference_points, DINO_EPS)
            ).sigmoid()
            reference_points = new_reference_points.detach()
            references.append(new_reference_points)
            intermediate.append(self.norm(output))
        return torch.stack(intermediate), torch.stack(references)


class DINOTransformer(nn.Module):
    """Encoder, query selection and decoder. ``enc_out_class_embed`` / ``enc_out_bbox_embed``
    (the proposal heads) are set by ``DINO``."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_queries: int = 900,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_queries = num_queries
        self.num_decoder_layers = num_decoder_layers
        self.num_feature_levels = num_feature_levels
        encoder_layer = DeformableTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, "relu", num_feature_levels, nhead, enc_n_points, attn_impl
        )
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableTransformerDecoderLayer(
            d_model, dim_feedforward, dropout, "relu", num_feature_levels, nhead, dec_n_points, attn_impl
        )
        self.decoder = DINODecoder(decoder_layer, num_decoder_layers, d_model)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed: nn.Module | None = None
        self.enc_out_bbox_embed: nn.Module | None = None
        nn.init.normal_(self.tgt_embed.weight)
        reset_deformable_parameters(self)
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        dn_tgt: Tensor | None = None,
        dn_refpoints: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``srcs``/``pos_embeds`` per level ``[B, C, H_l, W_l]``, ``masks`` ``[B, H_l, W_l]``; the
        denoising queries' content ``dn_tgt [B, P, C]`` and unsigmoided boxes ``dn_refpoints [B, P, 4]``
        go before the ``num_queries`` selected ones, ``attn_mask [P + Q, P + Q]`` keeping them apart.

        Returns ``hs [n_dec, B, P + Q, C]``, ``references [n_dec + 1, B, P + Q, 4]`` (sigmoid), the
        selected encoder tokens ``hs_enc [B, Q, C]``, their refined boxes ``ref_enc [B, Q, 4]``
        (sigmoid, with gradient) and their unrefined proposals ``init_box_proposal [B, Q, 4]``."""
        if self.enc_out_class_embed is None or self.enc_out_bbox_embed is None:
            raise RuntimeError("DINOTransformer needs enc_out_class_embed and enc_out_bbox_embed (set by DINO)")
        src, mask, pos, spatial_shapes, level_start_index, valid_ratios = flatten_levels(
            srcs, masks, pos_embeds, self.level_embed
        )
        memory = self.encoder(src, spatial_shapes, level_start_index, valid_ratios, pos, mask)

        output_memory, output_proposals = encoder_output_proposals(memory, mask, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_class = self.enc_out_class_embed(output_memory)
        enc_coord_unact = self.enc_out_bbox_embed(output_memory) + output_proposals
        topk = min(self.num_queries, enc_class.shape[1])  # officially not clamped (fails on tiny images)
        topk_proposals = torch.topk(enc_class.max(-1)[0], topk, dim=1)[1]
        index4 = topk_proposals.unsqueeze(-1).expand(-1, -1, 4)
        refpoint_undetach = torch.gather(enc_coord_unact, 1, index4)
        init_box_proposal = torch.gather(output_proposals, 1, index4).sigmoid()
        tgt_undetach = torch.gather(output_memory, 1, topk_proposals.unsqueeze(-1).expand(-1, -1, self.d_model))
        refpoints = refpoint_undetach.detach()
        tgt = self.tgt_embed.weight[:topk].unsqueeze(0).expand(memory.shape[0], -1, -1)
        if dn_tgt is not None and dn_refpoints is not None:
            refpoints = torch.cat([dn_refpoints, refpoints], 1)
            tgt = torch.cat([dn_tgt, tgt], 1)
        if attn_mask is not None:  # fewer encoder tokens than num_queries: fewer matching queries
            attn_mask = attn_mask[: tgt.shape[1], : tgt.shape[1]]
        hs, references = self.decoder(
            tgt, refpoints, memory, spatial_shapes, level_start_index, valid_ratios, mask, attn_mask
        )
        return hs, references, tgt_undetach, refpoint_undetach.sigmoid(), init_box_proposal


@dataclass
class DINOTransformerConfig:
    """What ``build_dino_transformer`` needs (the official flags of the same names)."""

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    num_feature_levels: int = 4
    dec_n_points: int = 4
    enc_n_points: int = 4
    num_queries: int = 900
    attn_impl: str = "auto"

    def validate(self) -> None:
        """``ValueError`` naming the flag for values the transformer cannot be built with."""
        validate_transformer_settings(self)
        if self.hidden_dim % 4:
            raise ValueError(f"--hidden_dim must be divisible by 4 for DINO's box embedding, got {self.hidden_dim}")


def build_dino_transformer(cfg: DINOTransformerConfig) -> DINOTransformer:
    cfg.validate()
    return DINOTransformer(
        d_model=cfg.hidden_dim,
        nhead=cfg.nheads,
        num_queries=cfg.num_queries,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        num_feature_levels=cfg.num_feature_levels,
        enc_n_points=cfg.enc_n_points,
        dec_n_points=cfg.dec_n_points,
        attn_impl=cfg.attn_impl,
    )
