"""The network: physics-informed features, a backbone, and the covariance, K and geometry heads
(SCIENCE.md, "The network").

Owns RisNet and ModelOutput. Imports torch, api_schemas and ris_model.physics/spectral.
Parameter groups (`RisNet.param_groups()`): backbone, cov_head, k_head, geom_head; a phase may freeze any.

Architectures (`ModelConfig.architecture`):
- "unrolled_omp": K_MAX greedy look-cancel-look-again iterations through the known operator H·diag(c_l)
  (ris_model.model.unrolled), a transformer over the looks, geometry as offsets from each look's anchor.
- "seed_cov": the reference baseline: a transformer over per-snapshot back-projections
  z_l = (H·diag(c_l))ᴴ·W·y_l, pooled, with the same heads.
No N×N matrix is formed or decomposed; the K-head's spectral path uses eigenvalues of the K_MAX×K_MAX Gram
matrix Aᴴ·A and of the M×M measurement covariance (eigenvalues only, float64, floored;
SCIENCE.md, "Numerically stable spectral features").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from api_schemas import ModelConfig, SystemConfig
from ris_model.accel.lowp import ALL_FUSED, FusedRoutes
from ris_model.model.unrolled import UnrolledOMPBackbone
from ris_model.model.whitening import channel_cholesky
from ris_model.physics import steering
from ris_model.spectral import feature_sizes, gram_eigen_features, measurement_eigen_features


@dataclass
class ModelOutput:
    """cov_factor: complex64 [B, N, K_MAX], R̂ = F·Fᴴ with trace 1; k_logits: [B, K_MAX] (class i ↔ K = i+1);
    azimuth, elevation: radians [B, K_MAX]; range_m: meters [B, K_MAX]; exist_logits: [B, K_MAX];
    gram_eigs: float [B, K_MAX], eigenvalues of Fᴴ·F (= the non-zero eigenvalues of R̂), descending."""

    cov_factor: Tensor
    k_logits: Tensor
    k_logits_spectral: Tensor
    k_logits_direct: Tensor
    azimuth: Tensor
    elevation: Tensor
    range_m: Tensor
    exist_logits: Tensor
    gram_eigs: Tensor


class RisNet(nn.Module):
    def __init__(self, system: SystemConfig, model: ModelConfig, routes: FusedRoutes = ALL_FUSED) -> None:
        """`routes`: the fused kernels of the unrolled look pass (ris_model.accel.lowp.FusedRoutes)."""
        super().__init__()
        self.system, self.cfg = system, model
        d, k_max, n = model.d_model, system.k_max, system.n_ris
        if model.architecture == "unrolled_omp":
            self.backbone: nn.Module = UnrolledOMPBackbone(system, model, routes)
        else:
            self.backbone = _SnapshotBackbone(system, model)
        self.cov_head = nn.Linear(d, 1 if model.cov_head == "geometric" else 2 * n)
        self.geom_head = nn.Linear(d, 4)  # per slot: φ, θ, r (squashed to the FOV) and an existence logit
        n_spec = feature_sizes(k_max, system.n_bs_antennas)
        self.k_head = nn.ModuleDict({
            "spectral": _mlp(n_spec, d, k_max),
            "direct": _mlp(d + k_max, d, k_max),
        })

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "backbone": list(self.backbone.parameters()),
            "cov_head": list(self.cov_head.parameters()),
            "k_head": list(self.k_head.parameters()),
            "geom_head": list(self.geom_head.parameters()),
        }

    def forward(self, y: Tensor, H: Tensor, codes: Tensor, snr_db: Tensor | None = None) -> ModelOutput:
        """y: complex64 [B, L, M] (axis 1 = snapshots); H: complex64 [B, M, N]; codes: complex64 [B, L, N].
        snr_db is accepted for API symmetry and not used: the model must infer the noise level itself."""
        return self.from_prepared(*self.prepare(y, H, codes))

    def prepare(self, y: Tensor, H: Tensor, codes: Tensor) -> tuple[Tensor, ...]:
        """The parameter-free part of the forward (no gradient): the measurement spectrum's features
        [B, 2M + 1] first, then the backbone's input — the look pass (looks [B, K, F], anchors [B, K, 3]) of
        unrolled_omp, or the back-projections z [B, L, N] of seed_cov. The measurement spectrum
        (cuSOLVER, which synchronizes with the host) is computed first, while the GPU queue is short; what
        follows, `from_prepared`, never synchronizes and can be captured as a CUDA graph
        (ris_model.accel.graphed_step)."""
        y, H = _unit_rms(y), _unit_rms(H)
        with torch.no_grad():
            meas_feats = measurement_eigen_features(y, floor=self.cfg.spectral_floor).float()
            if isinstance(self.backbone, UnrolledOMPBackbone):
                return (meas_feats, *self.backbone.look_pass(y, H, codes))
            z = _unit_rms(back_project(y, H, codes, whiten=self.cfg.backprojection == "whitened"))  # [B, L, N]
            return meas_feats, z

    def from_prepared(self, meas_feats: Tensor, *backbone_input: Tensor) -> ModelOutput:
        """The trainable part of the forward, from `prepare`'s outputs."""
        anchors = None
        if isinstance(self.backbone, UnrolledOMPBackbone):
            looks, anchors = backbone_input
            pooled, slots = self.backbone.encode(looks, anchors)  # [B, d], [B, K, d]
        else:
            pooled, slots = self.backbone(*backbone_input)  # [B, d], [B, K, d]
        s = self.system
        # geometry head: (φ, θ, r) per slot and an existence logit
        g = self.geom_head(slots).float()  # [B, K, 4]; fp32: bf16 would cost ~0.2° of angle resolution
        az_max, el_max = math.radians(s.azimuth_max_deg), math.radians(s.elevation_max_deg)
        if anchors is None:
            az = az_max * torch.tanh(g[..., 0])
            el = el_max * torch.tanh(g[..., 1])
            rng = s.range_min_m + (s.range_max_m - s.range_min_m) * torch.sigmoid(g[..., 2])
        else:  # sub-grid refinement: at most one grid step from the look's anchor
            assert isinstance(self.backbone, UnrolledOMPBackbone)  # anchors come from its looks only
            step = self.backbone.grid_step
            az = (anchors[..., 0] + step[0] * torch.tanh(g[..., 0])).clamp(-az_max, az_max)
            el = (anchors[..., 1] + step[1] * torch.tanh(g[..., 1])).clamp(-el_max, el_max)
            inv_r = anchors[..., 2] + step[2] * torch.tanh(g[..., 2])
            rng = (1 / inv_r.clamp_min(1e-6)).clamp(s.range_min_m, s.range_max_m)
        exist = g[..., 3]
        # covariance head: one complex column per slot, trace-normalized (R̂ = F·Fᴴ, tr R̂ = 1)
        f = self.cov_head(slots).float()  # [B, K, 1 or 2N]; fp32 under autocast (complex has no bf16)
        if self.cfg.cov_head == "geometric":
            F = steering(s, az, el, rng).transpose(1, 2) * torch.sqrt(nnf.softplus(f[..., 0]) + 1e-6)[:, None, :]
        else:
            F = torch.complex(f[..., : s.n_ris], f[..., s.n_ris:]).transpose(1, 2)  # [B, N, K]
        F = F / F.abs().square().sum((1, 2), keepdim=True).clamp_min(1e-12).sqrt()
        # K-head: spectral features (bounded) and a direct path, ensembled
        gram_eigs, gram_feats = gram_eigen_features(F, floor=self.cfg.spectral_floor)
        k_spec = self.k_head["spectral"](torch.cat([gram_feats.float(), meas_feats], -1)).float()
        exist_sorted = torch.sort(exist, dim=-1, descending=True).values
        k_direct = self.k_head["direct"](torch.cat([pooled.float(), exist_sorted], -1)).float()
        return ModelOutput(
            cov_factor=F, k_logits=0.5 * (k_spec + k_direct), k_logits_spectral=k_spec, k_logits_direct=k_direct,
            azimuth=az, elevation=el, range_m=rng, exist_logits=exist, gram_eigs=gram_eigs,
        )


def k_from_logits(k_logits: Tensor) -> Tensor:
    """The estimated K in 1..K_MAX from K logits [B, K_MAX] (class i ↔ K = i + 1, as the labels)."""
    return k_logits.argmax(-1) + 1


def back_project(y: Tensor, H: Tensor, codes: Tensor, *, whiten: bool) -> Tensor:
    """z_l = (H·diag(c_l))ᴴ·W·y_l, complex [B, L, N]; axis 1 is the snapshot axis.

    Since |c_n| = 1, (H·diag(c_l))·(H·diag(c_l))ᴴ = H·Hᴴ for every l, so one M×M Cholesky per scene whitens
    all snapshots: W = (H·Hᴴ + ε·tr(H·Hᴴ)/M·I)⁻¹ (input-only, no parameters upstream)."""
    yt = y.transpose(1, 2)  # [B, M, L]
    if whiten:
        yt = torch.cholesky_solve(yt, channel_cholesky(H))
    return (H.mH @ yt).transpose(1, 2) * codes.conj()


def _mlp(n_in: int, d: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, d), nn.GELU(), nn.Linear(d, n_out))


def _unit_rms(x: Tensor) -> Tensor:
    """Scale each scene to unit mean power (models must not depend on the absolute scale;
    ARCHITECTURE.md, "The data contract")."""
    dims = tuple(range(1, x.ndim))
    return x / x.abs().square().mean(dims, keepdim=True).clamp_min(1e-20).sqrt()


class _SnapshotBackbone(nn.Module):
    """The reference baseline: a transformer over per-snapshot back-projections z_l (real/imag stacked)."""

    def __init__(self, system: SystemConfig, model: ModelConfig) -> None:
        super().__init__()
        d = model.d_model
        self.embed = nn.Linear(2 * system.n_ris, d)
        self.pos = nn.Parameter(torch.randn(system.n_snapshots, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, model.n_heads, 2 * d, model.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, model.n_layers, enable_nested_tensor=False)
        self.to_slots = nn.Linear(d, system.k_max * d)
        self.norm = nn.LayerNorm(d)
        self.k_max = system.k_max

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        B = z.shape[0]
        x = self.embed(torch.cat([z.real, z.imag], -1)) + self.pos  # [B, L, d]
        pooled = self.norm(self.encoder(x).mean(1))  # [B, d]
        slots = self.to_slots(pooled).reshape(B, self.k_max, -1)  # [B, K, d]
        return pooled, self.norm(slots)
