"""The DCV network: a mean-scale hyperprior (Minnen et al. 2018) with gain units for variable rate.

Transforms are named by role as in CompressAI's ``models/google.py``:
analysis ``g_a``, synthesis ``g_s`` (transposed convolutions), hyper-analysis ``h_a`` and
hyper-synthesis ``h_s``. ``h_s`` is kept small and ReLU-only because the runtime evaluates it
with integer weights so that the entropy decoder's probabilities are exactly reproducible.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from ladder import COMPRESSAI_LAMBDAS
from torch import nn

# loss = lambda * 255^2 * MSE + bpp, one lambda per integer quality 1..8 (see ladder.py)
SCALE_MIN = 0.11
# The runtime's 64 scale levels (log-spaced, SCALE_MIN..256); its scale index is the level nearest in log
SCALE_TABLE = np.exp(np.linspace(math.log(SCALE_MIN), math.log(256.0), 64))
SCALE_THRESHOLDS = np.sqrt(SCALE_TABLE[:-1] * SCALE_TABLE[1:])


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Exactly doubles the size for odd k (5) and even k (4); even k spreads every output pixel over
    the same number of taps, which avoids the checkerboard pattern odd kernels leave."""
    if k % 2:
        return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=(k - stride) // 2)


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé 2016).

    beta and gamma are stored as square roots (plus a small pedestal), as in CompressAI: the
    off-diagonal gammas start near zero, where a plain abs() or clamp would have no gradient.
    """

    PEDESTAL = 2.0**-18

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.PEDESTAL))
        self.gamma = nn.Parameter(torch.sqrt(0.1 * torch.eye(channels) + self.PEDESTAL))

    def effective_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        beta = self.beta.clamp_min(math.sqrt(1e-6 + self.PEDESTAL)).pow(2) - self.PEDESTAL
        gamma = self.gamma.clamp_min(math.sqrt(self.PEDESTAL)).pow(2) - self.PEDESTAL
        return beta, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective_params()
        c = gamma.shape[0]
        norm = F.conv2d(x * x, gamma.reshape(c, c, 1, 1).to(x.dtype), beta.to(x.dtype))
        norm = torch.sqrt(norm)
        return x * norm if self.inverse else x / norm


class EntropyBottleneck(nn.Module):
    """Factorized prior for the hyper-latent z (Ballé et al. 2018, appendix 6.1)."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """x: (C, 1, L) -> logits of the cumulative density at x, same shape."""
        for i, matrix in enumerate(self.matrices):
            x = torch.matmul(F.softplus(matrix), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)


def gaussian_likelihood(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(round(v) bin) for a zero-mean Gaussian; v is the value minus its predicted mean."""
    scale = scale.clamp_min(SCALE_MIN)
    v = v.abs()
    upper = torch.special.ndtr((0.5 - v) / scale)
    lower = torch.special.ndtr((-0.5 - v) / scale)
    return upper - lower


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def anchor_mask(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Checkerboard (He et al. 2021): anchors at (i + j) even are coded first, from the hyperprior
    alone; the other half then also sees its decoded anchor neighbours."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return ((i + j) % 2 == 0)[None, None]


def context_prediction(m: int, channels: int, kernel: int = 5) -> nn.Sequential:
    """Checkerboard context model: a k x k convolution over the decoded anchors (the other taps only
    ever see zeros), ReLU, and a 1x1 convolution whose output is added to the hyper-synthesis'
    means and scales at the non-anchor positions. The last layer starts at zero, so a trained
    hyperprior model keeps its behaviour when the context is added."""
    head = nn.Conv2d(channels, 2 * m, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(conv(m, channels, kernel, 1), nn.ReLU(), head)


def channel_context_prediction(m: int, channels: int) -> nn.Sequential:
    """Channel context (from session 6): the second half of the latent channels is corrected from
    the first half, already decoded at the same and the neighbouring positions (a 3x3 convolution,
    ReLU, a zero-initialised 1x1 head). Anchors see only the first half's anchors; the others see
    all of the first half. As in Minnen & Singh 2020 and He et al. 2022 (ELIC), with two slices."""
    head = nn.Conv2d(channels, m, 1)  # means and scales of the M/2 channels of the second slice
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(conv(m // 2, channels, 3, 1), nn.ReLU(), head)


class ReconstructionOffsets(nn.Module):
    """Where in its bin the synthesis takes a latent (from session 14): y_hat = mu + q + sign(q) *
    offset[min(|q|, 3), scale level], zero for q = 0. A symbol only says that y - mu lies in
    [q - 1/2, q + 1/2), and for the peaked distributions of small scales most of that bin lies towards
    the mean (session 12 measured centroids up to 0.4 from the centre). The decoder knows every
    symbol's scale level exactly, so a learned table does it; it starts at zero (bin centres)."""

    MAGNITUDES = 3

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(self.MAGNITUDES, len(SCALE_THRESHOLDS) + 1))
        self.register_buffer("thresholds", torch.tensor(SCALE_THRESHOLDS, dtype=torch.float32), persistent=False)

    def forward(self, y_hat: torch.Tensor, scale: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        q = torch.round(y_hat - mu).detach()
        level = torch.bucketize(scale.detach().float().contiguous(), self.thresholds, right=True)
        magnitude = q.abs().clamp(max=self.MAGNITUDES).long()
        table = F.pad(self.table, (0, 0, 1, 0))  # row 0: q = 0 stays at the centre
        return y_hat + torch.sign(q) * table[magnitude, level]


def analysis_transform(m: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Four strided 5x5 convolutions, each halving the size, with GDN between them.

    Training time is mostly spent here (the symmetric 96-channel transform costs 24k multiply-adds
    per pixel, 3.6x the light synthesis), so a light analysis widens the channels gradually.
    """
    widths = (3, *channels, m)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(conv(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(GDN(widths[i + 1]))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))), k x k convolutions (3x3, or 1x1 for a per-position MLP). The second
    convolution starts at zero, so a trained model keeps its behaviour when the block is added and the
    block grows from there."""

    def __init__(self, channels: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, hidden, kernel, 1), nn.ReLU(), conv(hidden, channels, kernel, 1))
        nn.init.zeros_(self.body[2].weight)
        nn.init.zeros_(self.body[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def synthesis_transform(
    m: int, channels: tuple[int, ...], kernels: tuple[int, ...], residual: int = 0
) -> nn.Sequential:
    """Four transposed convolutions, each doubling the size, with inverse GDN between them.

    Decode time is spent where the feature maps are large, so a light decoder narrows the
    channels towards full resolution and uses small even kernels there. With ``residual`` hidden
    channels, a residual block at 1/8 resolution (after the first inverse GDN) adds capacity where
    it is cheap: without it the 192 -> 96 first layer is the synthesis' bottleneck (training/LOG.md,
    session 7). Its layers are named ``res1`` so that the other layers keep their indices.
    """
    widths = (m, *channels, 3)
    layers: list[tuple[str, nn.Module]] = []
    for i, k in enumerate(kernels):
        layers.append((str(2 * i), deconv(widths[i], widths[i + 1], k)))
        if i < len(kernels) - 1:
            layers.append((str(2 * i + 1), GDN(widths[i + 1], inverse=True)))
        if i == 0 and residual:
            layers.append(("res1", ResidualBlock(widths[1], residual)))
    return nn.Sequential(OrderedDict(layers))


class DCVModel(nn.Module):
    def __init__(
        self,
        n: int = 96,
        m: int = 192,
        nz: int = 128,
        nh: int = 128,
        qualities: int = 8,
        lambdas: tuple[float, ...] = COMPRESSAI_LAMBDAS,
        synthesis_channels: tuple[int, ...] | None = None,
        synthesis_kernels: tuple[int, ...] = (5, 5, 5, 5),
        synthesis_residual: int = 0,
        hyper_kernel: int = 3,
        analysis_channels: tuple[int, ...] | None = None,
        context_channels: int = 0,
        context_kernel: int = 5,
        context_fusion: bool = False,
        channel_context: int = 0,
        reconstruction_offsets: bool = False,
        synthesis_latent_mlp: int = 0,
        analysis_residual: int = 0,
    ) -> None:
        super().__init__()
        self.n, self.m, self.nz, self.nh = n, m, nz, nh
        self.g_a = analysis_transform(m, tuple(analysis_channels or (n, n, n)))
        self.g_s = synthesis_transform(
            m, tuple(synthesis_channels or (n, n, n)), tuple(synthesis_kernels), synthesis_residual
        )
        self.h_a = nn.Sequential(
            conv(m, nh, 3, 1), nn.ReLU(), conv(nh, nh), nn.ReLU(), conv(nh, nz),
        )
        self.h_s = nn.Sequential(
            deconv(nz, nh), nn.ReLU(), deconv(nh, 3 * m // 2), nn.ReLU(), conv(3 * m // 2, 2 * m, hyper_kernel, 1),
        )
        self.context_channels = context_channels
        if context_channels:
            self.context_prediction = context_prediction(m, context_channels, context_kernel)
        # Fusion (from session 6): the context's hidden layer also sees the hyperprior's means and
        # scales at the same position (a 1x1 convolution, zero at the start), so its correction can
        # depend on what the hyperprior already predicts, as in the entropy-parameters networks of
        # Minnen et al. 2018 and He et al. 2021.
        self.context_fusion = nn.Conv2d(2 * m, context_channels, 1) if context_channels and context_fusion else None
        if self.context_fusion is not None:
            nn.init.zeros_(self.context_fusion.weight)
            nn.init.zeros_(self.context_fusion.bias)
        # Two-slice channel context (from session 6): one network for the anchors, one for the others.
        self.channel_context = channel_context
        if channel_context:
            self.channel_context_anchor = channel_context_prediction(m, channel_context)
            self.channel_context_other = channel_context_prediction(m, channel_context)
        self.entropy_bottleneck = EntropyBottleneck(nz)
        # Gain units (Cui et al. 2020): one gain vector per quality on the latent, and its inverse.
        # Initialised so that the quantisation step shrinks with lambda, which the model then refines.
        self.lambdas = tuple(lambdas)
        log_gain = 0.5 * torch.log(torch.tensor(self.lambdas) / self.lambdas[3])
        self.gain = nn.Parameter(log_gain[:, None].repeat(1, m).clone())
        self.inv_gain = nn.Parameter(-log_gain[:, None].repeat(1, m).clone())
        self.qualities = qualities
        # Registered last, so that a run's optimizer state stays valid when it is added (train.py)
        self.reconstruction = ReconstructionOffsets() if reconstruction_offsets else None
        # Also after everything else, for the same reason. A latent MLP (session 15): a per-position
        # nonlinearity before the synthesis' linear 192 -> 96 first layer, its bottleneck (session 7);
        # 2 * m * hidden / 256 multiply-adds per pixel and no spatial reach, so the tile margin stays
        self.latent_mlp = ResidualBlock(m, synthesis_latent_mlp, kernel=1) if synthesis_latent_mlp else None
        # A residual block in the analysis before its last layer (session 15): capacity that costs
        # encode time only (2 * 96 * hidden * 9 / 64 multiply-adds per pixel at 1/8 resolution)
        last = tuple(analysis_channels or (n, n, n))[-1]
        self.analysis_block = ResidualBlock(last, analysis_residual) if analysis_residual else None

    # modules added to a trained model, each its own optimizer group at the end, in this order (train.py)
    ADDED_MODULES = ("latent_mlp", "analysis_block")

    def analyse(self, x: torch.Tensor) -> torch.Tensor:
        """The analysis transform (what analysis.onnx holds, before the gain)."""
        if self.analysis_block is None:
            return self.g_a(x)
        return self.g_a[-1](self.analysis_block(self.g_a[:-1](x)))

    def synthesise(self, y_scaled: torch.Tensor) -> torch.Tensor:
        """The synthesis transform on the latent times the inverse gain (what synthesis.onnx holds)."""
        return self.g_s(y_scaled if self.latent_mlp is None else self.latent_mlp(y_scaled))

    def synthesis_input(self, y_hat: torch.Tensor, scale: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """The quantised latent as the synthesis takes it: bin centres, or learned offsets in the bins."""
        return y_hat if self.reconstruction is None else self.reconstruction(y_hat, scale, mu)

    def gains(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample gain and inverse gain for integer quality indices q (0-based)."""
        return self.gain[q].exp()[:, :, None, None], self.inv_gain[q].exp()[:, :, None, None]

    def forward(self, x: torch.Tensor, q: torch.Tensor, frozen_analysis: bool = False) -> dict[str, torch.Tensor]:
        gain, inv_gain = self.gains(q)
        if frozen_analysis:
            return self._forward_frozen_analysis(x, gain, inv_gain)
        y = self.analyse(x).float() * gain
        z = self.h_a(y).float()
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        z_hat = ste_round(z)
        y_hat, scale, mu = self.entropy_parameters(y, self.h_s(z_hat).float(), ste_round)
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        y_lik = gaussian_likelihood(y_noisy - mu, scale)
        z_lik = self.entropy_bottleneck.likelihood(z_noisy)
        x_hat = self.synthesise(self.synthesis_input(y_hat, scale, mu) * inv_gain).float()
        return {"x_hat": x_hat, "y_lik": y_lik, "z_lik": z_lik}

    def _forward_frozen_analysis(
        self, x: torch.Tensor, gain: torch.Tensor, inv_gain: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Fine-tuning with the encoder side fixed ("soft then hard", Guo et al. 2021): the latents
        are rounded for the rate as well, so the entropy model and the synthesis learn the values they
        will see in a file instead of the noisy proxy. The means still learn from the rate through
        straight-through rounding; the analysis, hyper-analysis and gains get no gradient."""
        with torch.no_grad():
            y = self.analyse(x).float() * gain
            z_hat = torch.round(self.h_a(y).float())
        y_hat, scale, mu = self.entropy_parameters(y, self.h_s(z_hat).float(), ste_round)
        y_lik = gaussian_likelihood(y_hat - mu, scale)
        z_lik = self.entropy_bottleneck.likelihood(z_hat)
        x_hat = self.synthesise(self.synthesis_input(y_hat, scale, mu) * inv_gain).float()
        return {"x_hat": x_hat, "y_lik": y_lik, "z_lik": z_lik}

    def freeze_analysis(self) -> None:
        """No gradient for the encoder side (see ``_forward_frozen_analysis``)."""
        for part in (self.g_a, self.h_a, self.analysis_block):
            if part is not None:
                part.requires_grad_(False)
        self.gain.requires_grad_(False)


    def entropy_parameters(
        self, y: torch.Tensor, hyper: torch.Tensor, rounding=torch.round
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantised latent, scales and means from the hyper-synthesis output (and the context).

        The anchors are quantised around the hyperprior's means; the non-anchors around means
        corrected by the context model, which sees only the quantised anchors.
        """
        if self.channel_context:
            return self._entropy_parameters_sliced(y, hyper, rounding)
        scale, mu = hyper.chunk(2, dim=1)
        y_hat = rounding(y - mu) + mu
        if not self.context_channels:
            return y_hat, scale, mu
        anchor = anchor_mask(y.shape[2], y.shape[3], y.device)
        scale_c, mu_c = self._spatial_correction(y_hat * anchor, hyper).chunk(2, dim=1)
        scale = torch.where(anchor, scale, scale + scale_c)
        mu = torch.where(anchor, mu, mu + mu_c)
        y_hat = torch.where(anchor, y_hat, rounding(y - mu) + mu)
        return y_hat, scale, mu

    def _spatial_correction(self, y_hat_anchors: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """The checkerboard context's correction (scales, then means) from the decoded anchors."""
        conv0, relu, head = self.context_prediction
        hidden = conv0(y_hat_anchors)
        if self.context_fusion is not None:
            hidden = hidden + self.context_fusion(hyper)
        return head(relu(hidden)).float()

    def _entropy_parameters_sliced(
        self, y: torch.Tensor, hyper: torch.Tensor, rounding
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoding order: anchors of slice 1 (hyperprior), anchors of slice 2 (+ channel context
        from slice 1's anchors), then all non-anchors (+ the checkerboard context from all anchors),
        slice 2's also with the channel context from all of slice 1."""
        half = self.m // 2
        anchor = anchor_mask(y.shape[2], y.shape[3], y.device)
        scale, mu = hyper.chunk(2, dim=1)
        y1 = y[:, :half]
        # anchors
        y1_hat = rounding(y1 - mu[:, :half]) + mu[:, :half]
        ds, dm = self.channel_context_anchor(y1_hat * anchor).float().chunk(2, dim=1)
        scale_a = torch.cat([scale[:, :half], scale[:, half:] + ds], 1)
        mu_a = torch.cat([mu[:, :half], mu[:, half:] + dm], 1)
        y_hat_a = rounding(y - mu_a) + mu_a
        # non-anchors
        scale_c, mu_c = self._spatial_correction(y_hat_a * anchor, hyper).chunk(2, dim=1)
        scale_n, mu_n = scale + scale_c, mu + mu_c
        y1_full = torch.where(anchor, y_hat_a[:, :half], rounding(y1 - mu_n[:, :half]) + mu_n[:, :half])
        ds, dm = self.channel_context_other(y1_full).float().chunk(2, dim=1)
        scale_n = torch.cat([scale_n[:, :half], scale_n[:, half:] + ds], 1)
        mu_n = torch.cat([mu_n[:, :half], mu_n[:, half:] + dm], 1)
        scale = torch.where(anchor, scale_a, scale_n)
        mu = torch.where(anchor, mu_a, mu_n)
        y_hat = torch.where(anchor, y_hat_a, rounding(y - mu) + mu)
        return y_hat, scale, mu


def rate_distortion_loss(
    out: dict[str, torch.Tensor], x: torch.Tensor, lmbda: torch.Tensor, weight: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample bpp and MSE in fp32; rd = lambda * 255^2 * MSE + bpp per sample, and the loss to
    minimise mean(weight * rd) (weight 1 by default: the plain mean)."""
    b, _, h, w = x.shape
    npix = h * w
    bits_y = -torch.log2(out["y_lik"].clamp_min(1e-9)).reshape(b, -1).sum(1)
    bits_z = -torch.log2(out["z_lik"].clamp_min(1e-9)).reshape(b, -1).sum(1)
    bpp = (bits_y + bits_z) / npix
    mse = (out["x_hat"] - x).pow(2).reshape(b, -1).mean(1)
    rd = lmbda * 255**2 * mse + bpp
    loss = rd.mean() if weight is None else (weight * rd).mean()
    return {"loss": loss, "rd": rd.detach(), "bpp": bpp.mean(), "mse": mse.mean()}
