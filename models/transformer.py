"""The DETR encoder-decoder transformer (Carion et al., 2020): ``Transformer`` (post-norm layers, or
pre-norm with ``normalize_before``; positional encodings added to queries and keys at every
layer; a final decoder ``LayerNorm`` on each returned intermediate output), built by
``build_transformer`` from a ``TransformerConfig``.

The official architecture, parameter names and numbers; attention without weights
(``need_weights=False``), so PyTorch may run its fused scaled-dot-product kernels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over ``num_queries`` learned queries."""

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
        return_intermediate_dec: bool = False,
    ) -> None:
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"--hidden_dim ({d_model}) must be divisible by --nheads ({nhead})")
        encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        encoder_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before)
        self.decoder = TransformerDecoder(
            decoder_layer, num_decoder_layers, nn.LayerNorm(d_model), return_intermediate=return_intermediate_dec
        )
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """``src [B, C, H, W]``, ``mask [B, H, W]``, ``query_embed [Q, C]``, ``pos_embed [B, C, H, W]``.

        Returns ``hs [L, B, Q, C]`` (L = decoder layers if intermediate, else 1) and the encoder
        memory ``[B, C, H, W]``.
        """
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        tgt = torch.zeros_like(query_embed)
        memory = self.encoder(src, src_key_padding_mask=mask, pos=pos_embed)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos_embed, query_pos=query_embed)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)


class TransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = get_clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
    ) -> Tensor:
        """``src [HW, B, C]``, ``src_key_padding_mask [B, HW]``, ``pos [HW, B, C]`` -> ``[HW, B, C]``."""
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask, pos=pos)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(nn.Module):
    def __init__(
        self,
        decoder_layer: nn.Module,
        num_layers: int,
        norm: nn.Module | None = None,
        return_intermediate: bool = False,
    ) -> None:
        super().__init__()
        self.layers = get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        """``tgt [Q, B, C]``, ``memory [HW, B, C]`` -> ``[L, Q, B, C]`` (L = num_layers or 1)."""
        output = tgt
        intermediate = []
        for layer in self.layers:
            output = layer(
                output,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                pos=pos,
                query_pos=query_pos,
            )
            if self.return_intermediate:
                intermediate.append(self.norm(output) if self.norm is not None else output)
        if self.norm is not None:
            output = self.norm(output)
            if self.return_intermediate:
                intermediate[-1] = output
        if self.return_intermediate:
            return torch.stack(intermediate)
        return output.unsqueeze(0)


def _with_pos(tensor: Tensor, pos: Tensor | None) -> Tensor:
    return tensor if pos is None else tensor + pos


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation_fn(activation)
        self.normalize_before = normalize_before

    def _sa(self, x: Tensor, pos: Tensor | None, attn_mask: Tensor | None, key_padding_mask: Tensor | None) -> Tensor:
        q = k = _with_pos(x, pos)
        out = self.self_attn(q, k, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.dropout1(out)

    def _ff(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
    ) -> Tensor:
        """``src [HW, B, C]`` -> ``[HW, B, C]``."""
        if self.normalize_before:
            src = src + self._sa(self.norm1(src), pos, src_mask, src_key_padding_mask)
            return src + self._ff(self.norm2(src))
        src = self.norm1(src + self._sa(src, pos, src_mask, src_key_padding_mask))
        return self.norm2(src + self._ff(src))


class TransformerDecoderLayer(nn.Module):
    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: str = "relu",
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = get_activation_fn(activation)
        self.normalize_before = normalize_before

    def _sa(self, x: Tensor, query_pos: Tensor | None, attn_mask: Tensor | None, kpm: Tensor | None) -> Tensor:
        q = k = _with_pos(x, query_pos)
        out = self.self_attn(q, k, x, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)[0]
        return self.dropout1(out)

    def _ca(
        self,
        x: Tensor,
        memory: Tensor,
        query_pos: Tensor | None,
        pos: Tensor | None,
        attn_mask: Tensor | None,
        kpm: Tensor | None,
    ) -> Tensor:
        out = self.multihead_attn(
            _with_pos(x, query_pos),
            _with_pos(memory, pos),
            memory,
            attn_mask=attn_mask,
            key_padding_mask=kpm,
            need_weights=False,
        )[0]
        return self.dropout2(out)

    def _ff(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        """``tgt [Q, B, C]``, ``memory [HW, B, C]`` -> ``[Q, B, C]``."""
        if self.normalize_before:
            tgt = tgt + self._sa(self.norm1(tgt), query_pos, tgt_mask, tgt_key_padding_mask)
            tgt = tgt + self._ca(self.norm2(tgt), memory, query_pos, pos, memory_mask, memory_key_padding_mask)
            return tgt + self._ff(self.norm3(tgt))
        tgt = self.norm1(tgt + self._sa(tgt, query_pos, tgt_mask, tgt_key_padding_mask))
        tgt = self.norm2(tgt + self._ca(tgt, memory, query_pos, pos, memory_mask, memory_key_padding_mask))
        return self.norm3(tgt + self._ff(tgt))


def get_clones(module: nn.Module, n: int) -> nn.ModuleList:
    """``n`` independent deep copies of ``module`` (shared by the DETR and Deformable DETR stacks)."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def get_activation_fn(activation: str) -> Callable[[Tensor], Tensor]:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation should be one of {sorted(_ACTIVATIONS)}, not {activation}")
    return _ACTIVATIONS[activation]


@dataclass
class TransformerConfig:
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False


def build_transformer(cfg: TransformerConfig) -> Transformer:
    return Transformer(
        d_model=cfg.hidden_dim,
        nhead=cfg.nheads,
        num_encoder_layers=cfg.enc_layers,
        num_decoder_layers=cfg.dec_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        normalize_before=cfg.pre_norm,
        return_intermediate_dec=True,
    )
