"""Training-side pieces that the runtime must agree with (skipped where torch, an optional extra, is absent)."""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from model import SCALE_THRESHOLDS, DCVModel, ReconstructionOffsets  # noqa: E402
from train import extend_optimizer_state, load_run_weights, parameter_groups  # noqa: E402

from pillow_dcv import codec  # noqa: E402

SMALL = {"n": 8, "m": 8, "nz": 4, "nh": 8, "synthesis_channels": [8, 8, 8], "analysis_channels": [8, 8, 8]}


def test_offsets_match_the_runtime_table_lookup() -> None:
    offsets = ReconstructionOffsets()
    with torch.no_grad():
        offsets.table.copy_(torch.linspace(-0.4, 0.4, offsets.table.numel()).reshape(offsets.table.shape))
    rng = np.random.default_rng(0)
    q = rng.integers(-5, 6, 500)
    mu = rng.uniform(-2, 2, 500)
    scale = np.exp(rng.uniform(np.log(0.05), np.log(300), 500))
    got = offsets(torch.tensor(q + mu), torch.tensor(scale), torch.tensor(mu)).detach().numpy() - (q + mu)

    class Model:
        recon_offsets = offsets.table.detach().numpy().astype(np.float64)

    level = np.searchsorted(SCALE_THRESHOLDS, scale, side="right")  # the runtime's scale index
    np.testing.assert_allclose(got, codec.reconstruction_offset(Model(), q, level), atol=1e-6)
    assert np.all(got[q == 0] == 0)


def test_a_run_resumes_with_offsets_added_and_keeps_its_moments() -> None:
    old = DCVModel(**SMALL)
    opt = torch.optim.Adam(old.parameters(), lr=1e-4)
    old(torch.rand(1, 3, 64, 64), torch.tensor([0]))["x_hat"].mean().backward()
    opt.step()
    new = DCVModel(**SMALL, reconstruction_offsets=True)
    assert load_run_weights(new, old.state_dict()) == ["reconstruction.table"]
    assert torch.equal(new.g_s[0].weight, old.g_s[0].weight)
    optim = {"offsets_lr_scale": 20}
    resumed = torch.optim.Adam(parameter_groups(new, optim), lr=1e-4)
    resumed.load_state_dict(extend_optimizer_state(opt.state_dict(), new, optim))
    assert [len(g["params"]) for g in resumed.param_groups] == [len(list(old.parameters())), 1]
    assert resumed.param_groups[1]["lr_scale"] == 20
    first = next(iter(new.parameters()))
    assert torch.equal(resumed.state[first]["exp_avg"], opt.state[next(iter(old.parameters()))]["exp_avg"])
    with pytest.raises(RuntimeError):  # a missing tensor that is not at the end is not an addition
        load_run_weights(new, {k: v for k, v in old.state_dict().items() if not k.startswith("g_s.0.")})


def test_a_run_resumes_with_a_latent_mlp_added_and_keeps_its_output_and_moments() -> None:
    old = DCVModel(**SMALL, reconstruction_offsets=True)
    optim = {"offsets_lr_scale": 20}
    opt = torch.optim.Adam(parameter_groups(old, optim), lr=1e-4)
    x, q = torch.rand(1, 3, 64, 64), torch.tensor([0])
    old(x, q)["x_hat"].mean().backward()
    opt.step()
    new = DCVModel(**SMALL, reconstruction_offsets=True, synthesis_latent_mlp=16)
    names = [f"latent_mlp.body.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    assert load_run_weights(new, old.state_dict()) == names
    y = torch.randn(1, 8, 4, 4)
    assert torch.equal(new.synthesise(y), old.synthesise(y))  # the MLP starts as the identity
    resumed = torch.optim.Adam(parameter_groups(new, optim), lr=1e-4)
    resumed.load_state_dict(extend_optimizer_state(opt.state_dict(), new, optim))
    assert [len(g["params"]) for g in resumed.param_groups] == [len(list(old.parameters())) - 1, 1, 4]
    assert resumed.param_groups[1]["lr_scale"] == 20
    table_moment = opt.state[old.reconstruction.table]["exp_avg"]
    assert torch.equal(resumed.state[new.reconstruction.table]["exp_avg"], table_moment)
    assert new.latent_mlp.body[0].weight not in resumed.state


def test_an_analysis_block_added_to_a_run_starts_as_the_identity_in_a_group_of_its_own() -> None:
    old = DCVModel(**SMALL, reconstruction_offsets=True, synthesis_latent_mlp=16)
    new = DCVModel(**SMALL, reconstruction_offsets=True, synthesis_latent_mlp=16, analysis_residual=8)
    added = load_run_weights(new, old.state_dict())
    assert added and all(name.startswith("analysis_block.") for name in added)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(new.analyse(x), old.analyse(x))
    groups = parameter_groups(new, {"offsets_lr_scale": 20})
    assert [len(g["params"]) for g in groups[2:]] == [4, 4]
    assert groups[3]["params"][0] is new.analysis_block.body[0].weight


def test_a_widened_synthesis_computes_the_same_and_keeps_its_moments() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training" / "experiments"))
    from widen_synthesis import widen_moments, widen_weights

    old = DCVModel(**SMALL, reconstruction_offsets=True)
    optim = {"offsets_lr_scale": 20}
    opt = torch.optim.Adam(parameter_groups(old, optim), lr=1e-4)
    old(torch.rand(1, 3, 64, 64), torch.tensor([0]))["x_hat"].mean().backward()
    opt.step()
    new = DCVModel(**{**SMALL, "synthesis_channels": [12, 8, 8]}, reconstruction_offsets=True)
    new.load_state_dict(widen_weights(old.state_dict(), 12))
    y = torch.randn(1, 8, 4, 4) * 3
    torch.testing.assert_close(new.synthesise(y), old.synthesise(y), rtol=0, atol=1e-5)
    assert new.g_s[0].weight[:, 8:].abs().sum() > 0 and new.g_s[2].weight[8:].abs().sum() == 0
    resumed = torch.optim.Adam(parameter_groups(new, optim), lr=1e-4)
    resumed.load_state_dict(widen_moments(opt.state_dict(), new, optim, 12))
    moment = resumed.state[new.g_s[2].weight]["exp_avg"]
    assert moment.shape == new.g_s[2].weight.shape and moment[8:].abs().sum() == 0
    assert torch.equal(moment[:8], opt.state[old.g_s[2].weight]["exp_avg"])


def test_refitting_the_last_synthesis_layer_recovers_a_transposed_convolution() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training" / "experiments"))
    from narrow_synthesis import refit_last_layer

    torch.manual_seed(0)
    a = torch.randn(3, 6, 10, 12)
    w, bias = torch.randn(6, 3, 4, 4), torch.randn(3)
    target = torch.nn.functional.conv_transpose2d(a, w, bias, stride=2, padding=1)
    torch.testing.assert_close(refit_last_layer(a, target, bias), w, rtol=0, atol=1e-3)
    flipped = w.clone()
    flipped[:, :, 0, 0] = 0  # a fit that dropped a tap would not reproduce the output
    assert (torch.nn.functional.conv_transpose2d(a, flipped, bias, stride=2, padding=1) - target).abs().max() > 0.1


def test_a_narrowed_synthesis_loads_and_keeps_the_kept_channels_moments() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training" / "experiments"))
    from narrow_synthesis import narrow_moments, narrow_weights, narrowed

    torch.manual_seed(0)
    shape = {**SMALL, "synthesis_kernels": [5, 5, 4, 4], "reconstruction_offsets": True}  # as shipped
    old = DCVModel(**shape)
    optim = {"offsets_lr_scale": 20}
    opt = torch.optim.Adam(parameter_groups(old, optim), lr=1e-4)
    old(torch.rand(1, 3, 64, 64), torch.tensor([0]))["x_hat"].mean().backward()
    opt.step()
    cfg = {"model": shape, "optim": optim}
    sd, keep = narrow_weights(old.state_dict(), cfg, torch.rand(2, 3, 64, 64), 4)
    new = DCVModel(**narrowed(cfg, 4)["model"])
    new.load_state_dict(sd)
    assert new.g_s[4].weight.shape[1] == new.g_s[6].weight.shape[0] == 4 and len(keep) == 4
    assert torch.equal(new.g_s[5].gamma, old.g_s[5].gamma[keep][:, keep])
    resumed = torch.optim.Adam(parameter_groups(new, optim), lr=1e-4)
    resumed.load_state_dict(narrow_moments(opt.state_dict(), new, optim, keep))
    moment = resumed.state[new.g_s[4].weight]["exp_avg"]
    assert torch.equal(moment, opt.state[old.g_s[4].weight]["exp_avg"][:, keep])
