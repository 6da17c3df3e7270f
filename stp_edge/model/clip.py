"""CLIP image and text encoders with OpenAI's parameter layout (torch).

Module and parameter names match OpenAI's released checkpoints (`visual.conv1`, `visual.transformer.resblocks.N.
attn.in_proj_weight`, `token_embedding`, `ln_final`, `text_projection`, ...), so their state_dicts load without
renaming. Attention is written out (one packed in-projection, matmul, softmax) rather than nn.MultiheadAttention:
same parameters, but a graph that every ONNX exporter and TensorRT's MHA fusion handle the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stp_edge.config import TextConfig, VisionConfig


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as OpenAI's CLIP does, for fp16 stability)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (in_proj_*, out_proj)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = x.shape
        hd = w // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q * hd**-0.5) @ k.transpose(-2, -1)
        if mask is not None:
            att = att + mask
        out = att.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks (`resblocks.N`), batch-first."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class _TrailingPadConv2d(nn.Conv2d):
    """A 3x3 stride-2 convolution padded by one pixel on the right and bottom only (none on the left and top).

    Output pixel o sees input pixels 2o..2o+2 (centre 2o+1) instead of 2o-1..2o+1 (centre 2o).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


def conv_stem(patch_size: int, stem_width: int, width: int, centred: bool = False) -> nn.Sequential:
    """Convolutional patch embedding: log2(patch_size) x (3x3 stride-2 conv, BatchNorm, ReLU), 1x1 conv to width.

    Maps [B,3,S,S] to [B,width,S/patch,S/patch] like the single patch convolution it replaces. With padding 1
    everywhere, token o's receptive field is centred on input pixel patch*o, the corner of its cell. `centred`
    pads the last stride-2 conv on the right and bottom only, which moves that centre by patch/2 pixels to
    patch*o + patch/2 (the cell's centre is patch*o + (patch-1)/2 in pixel indices; half a pixel off).
    """
    layers: list[nn.Module] = []
    cin, cout = 3, stem_width
    n = patch_size.bit_length() - 1
    for k in range(n):
        if centred and k == n - 1:
            conv: nn.Conv2d = _TrailingPadConv2d(cin, cout, 3, stride=2, padding=0, bias=False)
        else:
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
        cin, cout = cout, cout * 2
    layers.append(nn.Conv2d(cin, width, 1))
    return nn.Sequential(*layers)


def patch_attention_mask(grid: int, radius: int) -> torch.Tensor:
    """Additive attention mask [1+N, 1+N] of `VisionConfig.patch_attention` (token 0 = the class token).

    Patch tokens see the patches within Chebyshev distance `radius` on the grid x grid layout and not the class
    token; the class token sees every token.
    """
    ij = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).reshape(-1, 2)
    near = (ij[:, None, :] - ij[None, :, :]).abs().amax(-1) <= radius  # [N, N]
    allowed = torch.ones(1 + grid * grid, 1 + grid * grid, dtype=torch.bool)
    allowed[1:, 0] = False
    allowed[1:, 1:] = near
    return torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))


class VisionTransformer(nn.Module):
    """CLIP ViT image encoder returning the frame embedding and the projected patch embeddings."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        scale = w**-0.5
        if cfg.stem == "conv":
            self.stem = conv_stem(cfg.patch_size, cfg.stem_width, w, cfg.stem_centred)
        else:
            self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.layers, cfg.heads)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))
        mask = patch_attention_mask(cfg.grid, cfg.patch_attention) if cfg.patch_attention >= 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] (CLIP-normalised) -> frame_emb [B,E], patch_emb [B,N,E]."""
        embed = self.stem if self.cfg.stem == "conv" else self.conv1
        x = embed(images.to(self.class_embedding.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, N, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        mask = None if self.attn_mask is None else self.attn_mask.to(x.dtype)
        x = self.transformer(self.ln_pre(x), mask)
        x = self.ln_post(x) @ self.proj
        return x[:, 0], x[:, 1:]


class CLIP(nn.Module):
    """Both towers under OpenAI's names: `visual.*`, and the text tower's parameters at top level."""

    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        self.vision_cfg, self.text_cfg = vision, text
        self.visual = VisionTransformer(vision)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(text.context_length, text.width))
        self.transformer = Transformer(text.width, text.layers, text.heads)
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(text.width**-0.5 * torch.randn(text.width, vision.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # log(100), OpenAI's trained value
        mask = torch.full((text.context_length, text.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)[0]

    def encode_embeddings(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B,L,W] (learned prompt vectors may be spliced in) -> text features [B,E]."""
        x = x + self.positional_embedding.to(x.dtype)
        x = self.transformer(x, self.attn_mask.to(x.dtype))
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), eot_index] @ self.text_projection

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B,L] int -> text features [B,E]. The end-of-text token has the largest id in CLIP's vocab."""
        return self.encode_embeddings(self.token_embedding(tokens), tokens.argmax(dim=-1))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens)
