"""STPrompt (Wu et al., ACM MM 2024) on a frozen CLIP; every number the paper leaves open is a config field.

Temporal stream: regions -> SA2 (motion prior, top-k, softmax weights) -> banded distance adapter -> C-branch
(anomaly score) and A-branch (cosine to learned class prompts). Spatial stream: training-free region scoring
against normal and abnormal text queries. Shapes follow docs/architecture.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stp_edge.config import STPromptConfig
from stp_edge.errors import UsageError
from stp_edge.model.clip import CLIP, LayerNorm
from stp_edge.model.regions import make_crops, pool_regions

TIE_BREAK = 1e-6


def motion_energy(regions: torch.Tensor) -> torch.Tensor:
    """Mo_t(r) = ||2 f_t(r) - f_{t-1}(r) - f_{t+1}(r)||_2 over time; regions [B,T,R2,E] -> [B,T,R2].

    Edge-replicated neighbours make the ends one-sided (2f_0 - f_0 - f_1 = f_0 - f_1) and give zero for T = 1.
    """
    prev = torch.cat([regions[:, :1], regions[:, :-1]], dim=1)
    nxt = torch.cat([regions[:, 1:], regions[:, -1:]], dim=1)
    return (2 * regions - prev - nxt).norm(dim=-1)


def sa2(frame_emb: torch.Tensor, regions: torch.Tensor, topk: int) -> torch.Tensor:
    """Spatial attention aggregation: x_t = frame_t + sum over the top-k moving regions of softmax(Mo) f_t(r)."""
    mo = motion_energy(regions)
    # Ties (e.g. a one-snippet video has zero motion everywhere) are broken towards lower region indices by a
    # tiny index ramp, so every runtime (torch, ONNX Runtime, TensorRT) selects the same regions.
    ramp = torch.arange(mo.shape[-1], device=mo.device, dtype=mo.dtype) * TIE_BREAK
    idx = (mo - ramp).topk(topk, dim=-1).indices  # [B,T,k]
    w = mo.gather(-1, idx).softmax(dim=-1)
    picked = regions.gather(2, idx.unsqueeze(-1).expand(*idx.shape, regions.shape[-1]))
    return frame_emb + (w.unsqueeze(-1) * picked).sum(dim=2)


def banded_adapter_matrix(t: int, sigma: float, radius: int, device=None, dtype=None,
                          form: str = "distance") -> torch.Tensor:
    """The adapter matrix with offsets beyond `radius` dropped (exactly zero), rows summing to 1.

    form "distance": A = rowwise softmax(-|i-j|/sigma); "exp": A = rowwise softmax(exp(-|i-j|/sigma)).
    """
    pos = torch.arange(t, device=device)
    d = (pos[:, None] - pos[None, :]).abs().to(dtype or torch.float32)
    kernel = -d / sigma
    logits = kernel.exp() if form == "exp" else kernel
    return logits.masked_fill(d > radius, float("-inf")).softmax(dim=-1)


def adapter_matrix(t: int, cfg: STPromptConfig, device=None, dtype=None) -> torch.Tensor:
    """The config's adapter matrix for a window of t snippets (form, sigma and radius from `cfg`)."""
    return banded_adapter_matrix(t, cfg.adapter_sigma, cfg.adapter_radius, device, dtype, cfg.adapter_form)


class FFN(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * mult)
        self.fc2 = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AdapterLayer(nn.Module):
    """x_tm = LN(A x); x_ta = LN(FFN(x_tm) + x_tm)."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.ln_mix = LayerNorm(dim)
        self.ffn = FFN(dim, mult)
        self.ln_out = LayerNorm(dim)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x_tm = self.ln_mix(a @ x)
        return self.ln_out(self.ffn(x_tm) + x_tm)


class PromptLearner(nn.Module):
    """CoOp-style class prompts: [SOT] ctx_1..ctx_n <class name> . [EOT] through the frozen text encoder."""

    def __init__(self, cfg: STPromptConfig, clip: CLIP, tokens: torch.Tensor) -> None:
        super().__init__()
        self.n_ctx = cfg.prompt_ctx
        self.ctx = nn.Parameter(0.02 * torch.randn(cfg.prompt_ctx, cfg.text.width))
        self.register_buffer("tokens", tokens, persistent=False)  # [K, L] with n_ctx placeholder words
        self._clip = [clip]  # a plain list: the CLIP weights belong to STPrompt, not to this module

    def forward(self) -> torch.Tensor:
        clip = self._clip[0]
        emb = clip.token_embedding(self.tokens)
        ctx = self.ctx.to(emb.dtype).unsqueeze(0).expand(emb.shape[0], -1, -1)
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx :]], dim=1)
        return clip.encode_embeddings(emb, self.tokens.argmax(dim=-1))


class STPrompt(nn.Module):
    """The full model: CLIP encoders (frozen by default), temporal stream heads and the spatial stream."""

    def __init__(self, cfg: STPromptConfig, tokenizer=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = CLIP(cfg.vision, cfg.text)
        e = cfg.vision.embed_dim
        self.adapter = nn.ModuleList([AdapterLayer(e, cfg.ffn_mult) for _ in range(cfg.adapter_layers)])
        self.c_branch = nn.Sequential(FFN(e, cfg.ffn_mult), nn.Linear(e, 1))
        class_tokens, query_tokens = self._tokenize(cfg, tokenizer)
        self.prompts = PromptLearner(cfg, self.clip, class_tokens)
        self.register_buffer("query_tokens", query_tokens, persistent=False)
        if cfg.spatial_queries == "class_prompts":
            n_normal, n_abnormal = 1, cfg.num_classes - 1
        else:
            n_normal = len(cfg.normal_queries)
            n_abnormal = query_tokens.shape[0] - n_normal
        abnormal = torch.cat([torch.zeros(n_normal), torch.ones(n_abnormal)]).bool()
        self.register_buffer("query_is_abnormal", abnormal, persistent=False)
        # Frozen text-side constants, refreshed by `freeze_text()`; these are what export bakes in.
        self.register_buffer("class_features", torch.zeros(cfg.num_classes, e))
        self.register_buffer("query_features", torch.zeros(n_normal + n_abnormal, e))
        self.text_frozen = False

    @staticmethod
    def _tokenize(cfg: STPromptConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        if tokenizer is None:
            from stp_edge.model.tokenizer import default_tokenizer

            tokenizer = default_tokenizer()
        length = cfg.text.context_length
        placeholder = " ".join(["X"] * cfg.prompt_ctx)
        classes = tokenizer([f"{placeholder} {name}." for name in cfg.class_names], length)
        queries = list(cfg.normal_queries) + [q for q, _ in cfg.abnormal_query_texts()]
        return torch.from_numpy(classes), torch.from_numpy(tokenizer(queries, length))

    # --- text side -------------------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """Class prompt features E [K,E], L2-normalised (cached constants once the text side is frozen)."""
        if self.text_frozen:
            return self.class_features
        return F.normalize(self.prompts(), dim=-1)

    def spatial_query_features(self) -> torch.Tensor:
        """Spatial-stream query features [Q,E]: normal queries first, then abnormal ones."""
        if self.text_frozen:
            return self.query_features
        if self.cfg.spatial_queries == "class_prompts":
            return self.text_features()
        return F.normalize(self.clip.encode_text(self.query_tokens), dim=-1)

    @torch.no_grad()
    def freeze_text(self, query_features: torch.Tensor | None = None) -> None:
        """Bake class prompt and query features into buffers (done before export and streaming)."""
        self.text_frozen = False
        self.class_features.copy_(self.text_features())
        self.query_features.copy_(self.spatial_query_features() if query_features is None else query_features)
        self.text_frozen = True

    # --- image side ------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] -> frame_emb [B,E], patch_emb [B,N,E]."""
        return self.clip.visual(images)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] -> frame_emb [B,E], region_emb [B,R2,E]: what the temporal and spatial streams read.

        This is the exported encoder graph. Crops mode encodes each image and its R2 crops in one batch: crops of
        the image given (region extent "center"). Crops of the whole frame (region extent "frame") cannot be cut
        from it: those bundles export `encode` (images -> frame_emb, patch_emb) and the preprocessors cut the crops.
        """
        cfg = self.cfg
        if cfg.region_mode == "tokens":
            frame, patches = self.encode(images)
            return frame, pool_regions(patches, cfg.vision.grid, cfg.region_grid)
        b = images.shape[0]
        frame, _ = self.encode(torch.cat([images, make_crops(images, cfg.region_grid)]))
        return frame[:b], frame[b:].reshape(b, cfg.num_regions, -1)

    def regions(self, images: torch.Tensor, patch_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Region features [B,R2,E]: pooled patch tokens ("tokens") or encoded sliding-window crops ("crops")."""
        cfg = self.cfg
        if cfg.region_mode == "tokens":
            if patch_emb is None:
                patch_emb = self.encode(images)[1]
            return pool_regions(patch_emb, cfg.vision.grid, cfg.region_grid)
        frame, _ = self.encode(make_crops(images, cfg.region_grid))
        return frame.reshape(images.shape[0], cfg.num_regions, -1)

    # --- temporal stream -------------------------------------------------------------------------------
    def temporal_features(self, frame_emb: torch.Tensor, region_emb: torch.Tensor | None) -> torch.Tensor:
        """SA2 + adapter: frame_emb [B,T,E], region_emb [B,T,R2,E] -> x_ta [B,T,E].

        A frame-only model (`cfg.region_term` false) skips SA2's region term and never reads `region_emb`
        (which may then be None, as for VadCLIP's features).
        """
        cfg = self.cfg
        if cfg.region_term:
            if region_emb is None:
                raise UsageError("this model has SA2's region term on (region_term=true) and needs region_emb")
            x = sa2(frame_emb, region_emb, cfg.motion_topk)
        else:
            x = frame_emb
        a = adapter_matrix(x.shape[1], cfg, x.device, x.dtype)
        for layer in self.adapter:
            x = layer(x, a)
        return x

    def temporal_logits(self, frame_emb: torch.Tensor, region_emb: torch.Tensor | None):
        """-> (score logits [B,T], class logits [B,T,K]) before sigmoid/softmax (used by the losses)."""
        x = self.temporal_features(frame_emb, region_emb)
        score_logit = self.c_branch(x).squeeze(-1)
        # Cosine logits are scaled by 1/temperature (~14x): computed in float32 even in an fp16 graph.
        class_logit = F.normalize(x.float(), dim=-1) @ self.text_features().float().T / self.cfg.temperature
        return score_logit, class_logit

    def temporal(self, frame_emb: torch.Tensor, region_emb: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> score [B,T] (sigmoid of the C-branch), class_probs [B,T,K] (softmax of the A-branch)."""
        score_logit, class_logit = self.temporal_logits(frame_emb, region_emb)
        return torch.sigmoid(score_logit), class_logit.softmax(dim=-1)

    # --- spatial stream --------------------------------------------------------------------------------
    def spatial(self, region_emb: torch.Tensor) -> torch.Tensor:
        """region_emb [B,R2,E] -> region anomaly scores [B,R2]: abnormal share of exp(cos/temperature)."""
        q = self.spatial_query_features()
        sim = F.normalize(region_emb.float(), dim=-1) @ q.float().T  # float32: see temporal_logits
        probs = (sim / self.cfg.temperature).softmax(dim=-1)
        return (probs * self.query_is_abnormal.to(probs.dtype)).sum(dim=-1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline reference on one clip: images [T,3,S,S] (one per snippet) -> score [1,T], class_probs [1,T,K]."""
        frame, patch = self.encode(images)
        regions = self.regions(images, patch)
        return self.temporal(frame.unsqueeze(0), regions.unsqueeze(0))
