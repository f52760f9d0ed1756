"""Is the synthesis faster with each transposed convolution split into its four output phases? (session 13)

onnxruntime runs ConvTranspose as one GEMM into a (cout * k * k, H * W) column buffer and a col2im that
scatters it into the output: for a 5x5 kernel the buffer is 25 values per input pixel and channel,
written and read once. Session 9's single convolution over a shared 3x3 window (+ DepthToSpace) avoided
the scatter but computes 9 taps where a k=5 phase needs 6.25 on average, and was slower. Here every
phase is its own convolution with exactly its taps (3x3, 3x2, 2x3, 2x2 for k=5; 2x2 for k=4), the
four outputs concatenated and interleaved by DepthToSpace: the same multiply-adds as the transposed
convolution, no column buffer, and onnxruntime's direct (NCHWc) convolution kernels.

    python training/experiments/phase_synthesis.py [training/weights/<id>.pt]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lower_synthesis import phase_taps  # noqa: E402  (the export's rewrite: the same phases)


class PhaseDeconv(nn.Module):
    """A stride-2 ConvTranspose2d (output 2H x 2W) as four convolutions and a depth-to-space."""

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        w = deconv.weight.detach()  # (cin, cout, k, k)
        k, p = w.shape[2], deconv.padding[0]
        self.convs = nn.ModuleList()
        self.pads: list[tuple[int, int, int, int]] = []
        for ry in (0, 1):
            for rx in (0, 1):
                ty, tx = phase_taps(k, p, ry), phase_taps(k, p, rx)
                kernel = w[:, :, [t for _, t in ty]][:, :, :, [t for _, t in tx]].transpose(0, 1)
                conv = nn.Conv2d(w.shape[0], w.shape[1], (len(ty), len(tx)))
                conv.weight.data = kernel.contiguous()
                conv.bias.data = deconv.bias.detach().clone()
                self.convs.append(conv)
                # F.pad order: left, right, top, bottom
                self.pads.append((-tx[0][0], tx[-1][0], -ty[0][0], ty[-1][0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = torch.stack([conv(F.pad(x, pad)) for conv, pad in zip(self.convs, self.pads)], 2)
        return F.pixel_shuffle(phases.flatten(1, 2), 2)  # channel (c, ry, rx) -> pixel (2u + ry, 2v + rx)


def main() -> None:
    from subpixel_synthesis import compare_with_convtranspose

    weights = sys.argv[1] if len(sys.argv) > 1 else "training/weights/dcv-ms2-s30.pt"
    compare_with_convtranspose(PhaseDeconv, "phase", weights)


if __name__ == "__main__":
    main()
