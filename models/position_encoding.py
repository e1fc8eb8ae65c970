"""Positional encodings for image features, ``[B, 2 * num_pos_feats, H, W]``: ``PositionEmbeddingSine``
(Vaswani et al.'s sine, generalised to 2-D: the official DETR encoding; ``offset=-0.5`` gives
Deformable DETR's) and ``PositionEmbeddingLearned``, built by ``build_position_encoding`` from a
``PositionEncodingConfig``.

The official encodings, Deformable DETR's variant as one argument instead of a second class, no TorchScript.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from util.misc import NestedTensor, refuse_torchscript


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of the (optionally normalised) row and column index of each
    non-padded pixel. Padding (``mask == True``) does not advance the coordinates. ``offset`` shifts
    the coordinates before normalisation (Deformable DETR: -0.5, a second class officially).
    """

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: int = 10000,
        normalize: bool = False,
        scale: float | None = None,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        """``tensor_list.tensors [B, C, H, W]``, ``mask [B, H, W]`` -> ``[B, 2 * num_pos_feats, H, W]``."""
        x = tensor_list.tensors
        mask = tensor_list.mask
        if mask is None:
            raise ValueError("PositionEmbeddingSine needs a padding mask")
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Absolute learned embeddings of row and column index (up to 50 x 50 feature maps)."""

    __prepare_scriptable__ = refuse_torchscript  # torch.jit.script: a clear error

    def __init__(self, num_pos_feats: int = 256) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(50, num_pos_feats)
        self.col_embed = nn.Embedding(50, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        """``tensor_list.tensors [B, C, H, W]`` -> ``[B, 2 * num_pos_feats, H, W]`` (H, W <= 50)."""
        x = tensor_list.tensors
        h, w = x.shape[-2:]
        if h > 50 or w > 50:
            raise ValueError(f"PositionEmbeddingLearned supports feature maps up to 50x50, got {h}x{w}")
        i = torch.arange(w, device=x.device)
        j = torch.arange(h, device=x.device)
        x_emb = self.col_embed(i)
        y_emb = self.row_embed(j)
        pos = torch.cat([x_emb.unsqueeze(0).repeat(h, 1, 1), y_emb.unsqueeze(1).repeat(1, w, 1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


@dataclass
class PositionEncodingConfig:
    """``kind``: ``sine`` (alias ``v2``) or ``learned`` (alias ``v3``); ``hidden_dim`` is split
    evenly between rows and columns. ``offset=-0.5`` gives Deformable DETR's variant."""

    kind: str = "sine"
    hidden_dim: int = 256
    scale: float = 2 * math.pi
    offset: float = 0.0
    temperature: int = 10000  # DINO: 20


def _sine(cfg: PositionEncodingConfig) -> nn.Module:
    return PositionEmbeddingSine(
        cfg.hidden_dim // 2, cfg.temperature, normalize=True, scale=cfg.scale, offset=cfg.offset
    )


def _learned(cfg: PositionEncodingConfig) -> nn.Module:
    return PositionEmbeddingLearned(cfg.hidden_dim // 2)


POSITION_ENCODINGS: dict[str, Callable[[PositionEncodingConfig], nn.Module]] = {
    "sine": _sine,
    "v2": _sine,
    "learned": _learned,
    "v3": _learned,
}


def build_position_encoding(cfg: PositionEncodingConfig) -> nn.Module:
    if cfg.kind not in POSITION_ENCODINGS:
        raise ValueError(f"--position_embedding: unknown '{cfg.kind}', choose from {sorted(POSITION_ENCODINGS)}")
    if cfg.hidden_dim % 2:
        raise ValueError(f"--hidden_dim must be even for the position encoding, got {cfg.hidden_dim}")
    return POSITION_ENCODINGS[cfg.kind](cfg)
