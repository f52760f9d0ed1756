"""Train the DCV model on CPU: bf16 autocast + channels_last, one variable-rate model, resumable.

    python training/train.py --config training/config.toml [--max-hours H] [--init weights.pt]

On a lent GPU machine (no ../shared there): `--device cuda --pack gpu_carry` trains from the packed
crops of training/gpu_pack.py, without the Kodak and held-out evaluations (training/gpu_pack.py has
the whole command).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import BucketSampler, CropSampler, PackSampler, build_cache, cache_entries, cache_sources, held_out  # noqa: E402
from ladder import COMPRESSAI_LAMBDAS, remap_ladder  # noqa: E402
from model import DCVModel, gaussian_likelihood, rate_distortion_loss  # noqa: E402


def expand(p: str) -> Path:
    return Path(os.path.expanduser(p))


def source_weights(train_dir: Path, weights: dict[str, float]) -> list[float] | None:
    """Per cache entry, the sampling weight of its source folder (``[data] source_weights``, e.g.
    ``{ bsds500 = 0.25 }``; folders not named keep 1), or None when no weights are set."""
    if not weights:
        return None
    sources = cache_sources(train_dir)
    unknown = set(weights) - set(sources)
    if unknown:
        raise ValueError(f"source_weights names folders that {train_dir} does not have: {sorted(unknown)}")
    return [float(weights.get(s, 1.0)) for s in sources]


def learning_rate(step: int, cfg: dict, warm_from: int = 0) -> float:
    """Cosine decay, with a linear warm-up to it from ``warm_from`` (the step a run was initialised at).

    An ``anneal_from`` step starts a second, short cosine from the rate there down to ``anneal_lr``
    over ``anneal_steps``: a release branch of a run that goes on at the main schedule.
    """
    t = min(1.0, step / cfg["decay_steps"])
    lr = cfg["lr_final"] + 0.5 * (cfg["lr"] - cfg["lr_final"]) * (1 + math.cos(math.pi * t))
    if "anneal_from" in cfg and step >= cfg["anneal_from"]:
        start = learning_rate(cfg["anneal_from"], {k: v for k, v in cfg.items() if k != "anneal_from"})
        t = min(1.0, (step - cfg["anneal_from"]) / cfg["anneal_steps"])
        lr = cfg["anneal_lr"] + 0.5 * (start - cfg["anneal_lr"]) * (1 + math.cos(math.pi * t))
    if step - warm_from < cfg["warmup_steps"]:
        return lr * (step - warm_from + 1) / cfg["warmup_steps"]
    return lr


def to_tensor(batch: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


class QualityBalance:
    """Per-quality loss weights that give every quality the same share of the training signal.

    A q8 sample's loss is ~15x a q1 sample's, so in a plain mean the shared transforms learn mostly
    for the high rates, while BD-rate (the score) counts a 1 % saving at q1 as much as one at q8.
    Dividing each sample's loss by its quality's running mean makes every quality's relative change
    count alike; within a quality the rate/distortion trade-off (lambda) is unchanged. The weights
    are normalised to mean 1 over the qualities, so the loss keeps its scale.
    """

    def __init__(self, qualities: int, device: torch.device, decay: float = 0.99) -> None:
        self.avg = torch.zeros(qualities, device=device)  # 0: not seen yet (weight 1)
        self.decay = decay

    def weights(self, q: torch.Tensor) -> torch.Tensor:
        seen = self.avg > 0
        mean = self.avg.sum() / seen.sum().clamp_min(1)
        return torch.where(seen, mean / self.avg.clamp_min(1e-12), torch.ones_like(self.avg))[q]

    @torch.no_grad()
    def update(self, q: torch.Tensor, rd: torch.Tensor) -> None:
        for i in range(q.shape[0]):  # tensor ops only: no host sync on a GPU
            old = self.avg[q[i]]
            self.avg[q[i]] = torch.where(old > 0, self.decay * old + (1 - self.decay) * rd[i], rd[i])


@torch.no_grad()
def evaluate(
    model: DCVModel, images: list[np.ndarray], qualities: Sequence[int] = (0, 3, 7)
) -> dict[str, list[float]]:
    """Rounded latents, estimated bits: a cheap curve for the log (not the shipped numbers); means over
    the images at each quality index."""
    model.eval()
    device = next(model.parameters()).device
    result: dict[str, list[float]] = {"bpp": [], "psnr": []}
    for qi in qualities:
        bpps, psnrs = [], []
        for img in images:
            x = to_tensor(img[None], device)
            q = torch.tensor([qi], device=device)
            gain, inv_gain = model.gains(q)
            y = model.analyse(x) * gain
            z = torch.round(model.h_a(y))
            y_hat, scale, mu = model.entropy_parameters(y, model.h_s(z))
            bits = -torch.log2(gaussian_likelihood(y_hat - mu, scale).clamp_min(1e-9)).sum()
            bits += -torch.log2(model.entropy_bottleneck.likelihood(z).clamp_min(1e-9)).sum()
            x_hat = model.synthesise(model.synthesis_input(y_hat, scale, mu) * inv_gain).clamp(0, 1)
            mse = ((x_hat * 255).round() / 255 - x).pow(2).mean().item()
            bpps.append(bits.item() / (x.shape[2] * x.shape[3]))
            psnrs.append(10 * math.log10(1 / mse))
        result["bpp"].append(round(float(np.mean(bpps)), 4))
        result["psnr"].append(round(float(np.mean(psnrs)), 3))
    model.train()
    return result


def load_eval_images(folder: Path, count: int) -> list[np.ndarray]:
    return [load_eval_image(p) for p in sorted(folder.glob("*.png"))[:: max(1, 24 // count)][:count]]


def load_eval_image(path: Path, largest: int = 10**9) -> np.ndarray:
    """The centre of the image, at most largest x largest, cut to multiples of 64."""
    a = np.asarray(Image.open(path).convert("RGB"))
    h, w = min(largest, a.shape[0]) // 64 * 64, min(largest, a.shape[1]) // 64 * 64
    top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return a[top : top + h, left : left + w]


def use_bf16(setting: str | bool) -> bool:
    if setting != "auto":
        return bool(setting)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def warm_start(model: DCVModel, ema: DCVModel, path: Path) -> tuple[int, float]:
    """Initialise from exported weights (training/weights/<id>.pt) or another run's checkpoint.

    Tensors whose name and shape match are copied, the rest keep their fresh initialisation, so a
    changed transform (e.g. a lighter synthesis, an added context model) starts from the rest of a
    trained model. The EMA starts from the source's EMA where it has one.
    Returns the source's step count and hours (a new optimizer is created either way).
    """
    src = torch.load(path, map_location="cpu")
    weights = adopt_ladder(src.get("state_dict") or src["model"], src.get("config", {}), model)
    fresh = _load_matching(model, weights)
    ema.load_state_dict(model.state_dict())
    if "ema" in src:
        _load_matching(ema, adopt_ladder(src["ema"], src.get("config", {}), model))
    print(f"initialised from {path} (step {src.get('step', 0)}); fresh: {fresh or 'none'}", flush=True)
    return src.get("step", 0), src.get("hours", 0.0)


def source_ladder(source_cfg: dict) -> tuple[float, ...]:
    """The lambda ladder a checkpoint was trained for (CompressAI's when its config names none)."""
    return tuple(source_cfg.get("model", {}).get("lambdas", COMPRESSAI_LAMBDAS))


def adopt_ladder(weights: dict[str, torch.Tensor], source_cfg: dict, model: DCVModel) -> dict[str, torch.Tensor]:
    """Weights trained for the source's lambda ladder, with gains remapped to the model's ladder."""
    old = source_ladder(source_cfg)
    if old == model.lambdas:
        return weights
    print(f"quality ladder {old} -> {model.lambdas}: gains remapped", flush=True)
    weights = dict(weights)
    for name in ("gain", "inv_gain"):
        weights[name] = torch.from_numpy(remap_ladder(weights[name].float().numpy(), old, model.lambdas))
    return weights


def adopt_ladder_moments(opt_state: dict, source_cfg: dict, model: DCVModel) -> dict:
    """Adam's moments of the gains follow their rows (nearest row outside the old ladder)."""
    old = source_ladder(source_cfg)
    if old == model.lambdas:
        return opt_state
    names = [n for n, _ in model.named_parameters()]
    for name in ("gain", "inv_gain"):
        moments = opt_state["state"][names.index(name)]
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key] = torch.from_numpy(remap_ladder(moments[key].numpy(), old, model.lambdas, extrapolate=False))
    return opt_state


def load_run_weights(model: DCVModel, weights: dict[str, torch.Tensor]) -> list[str]:
    """A run's weights into a model that may have more: parameters added at the end of the model
    (e.g. `reconstruction_offsets`) keep their fresh values. Returns their names."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    names = [n for n, _ in model.named_parameters()]
    if unexpected or any(names.index(n) < len(names) - len(missing) for n in missing):
        raise RuntimeError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
    return missing


def parameter_groups(model: DCVModel, optim: dict) -> list[dict]:
    """One group; the reconstruction offsets apart with `offsets_lr_scale` times the learning rate (a
    3 x 64 table that the step size of the 5e-5 floor would take ~10k steps to move by 0.4); and each
    module added to a trained model (DCVModel.ADDED_MODULES) in a group of its own at the end, so that
    a run resumed with it keeps every other parameter's moments."""
    table = [model.reconstruction.table] if model.reconstruction is not None else []
    added = [list(module.parameters()) for name in model.ADDED_MODULES if (module := getattr(model, name)) is not None]
    special = {id(p) for p in table + [p for params in added for p in params]}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special]}]
    if table:
        groups.append({"params": table, "lr_scale": float(optim.get("offsets_lr_scale", 1.0))})
    groups += [{"params": params} for params in added]
    return groups


def extend_optimizer_state(opt_state: dict, model: DCVModel, optim: dict) -> dict:
    """Adam's state of a run for a model with parameters added at the end (they start without
    moments), in the groups of parameter_groups()."""
    groups = parameter_groups(model, optim)
    if len(opt_state["param_groups"]) == len(groups):
        return opt_state
    first = {k: v for k, v in opt_state["param_groups"][0].items() if k != "params"}
    index, new_groups = 0, []
    for group in groups:
        count = len(group["params"])
        new_groups.append({**first, **{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(index, index + count))})
        index += count
    return {"state": opt_state["state"], "param_groups": new_groups}


def _load_matching(model: DCVModel, weights: dict[str, torch.Tensor]) -> list[str]:
    own = model.state_dict()
    matched = {k: v.float() for k, v in weights.items() if k in own and own[k].shape == v.shape}
    for k, v in weights.items():  # a convolution whose kernel shrank (e.g. 3x3 -> 1x1) keeps its centre taps
        if k in own and k not in matched and v.ndim == 4 and own[k].shape[:2] == v.shape[:2]:
            kh, kw = own[k].shape[2:]
            top, left = (v.shape[2] - kh) // 2, (v.shape[3] - kw) // 2
            if top >= 0 and left >= 0:
                matched[k] = v[:, :, top : top + kh, left : left + kw].float().clone()
    model.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(Path(__file__).with_name("config.toml")))
    ap.add_argument("--max-hours", type=float, default=1e9)
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--fixed-quality", type=int, help="train one quality only (1..8), for A/B runs")
    ap.add_argument("--init", help="when no checkpoint exists, start from exported weights "
                    "(training/weights/<id>.pt) or another run's checkpoint")
    ap.add_argument("--reset-ema", action="store_true", help="restart the EMA from the current weights "
                    "(after a warm start with fresh layers the old average is meaningless)")
    ap.add_argument("--threads", type=int, help="override [run] threads (two 1-thread A/B runs share 2 cores)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU machine")
    ap.add_argument("--pack", help="train from a crop pack (training/gpu_pack.py) instead of the photo cache; "
                    "no Kodak or held-out evaluation")
    ap.add_argument("--checkpoint", help="override [run] checkpoint")
    ap.add_argument("--log", help="override [run] log")
    ap.add_argument("--batch", type=int, help="override [data] batch")
    ap.add_argument("--crop", type=int, help="override [data] crop")
    ap.add_argument("--export-ema", help="at the end also write the EMA weights, fp16, in the format of "
                    "training/weights/<id>.pt (10 MB; what comes back from a GPU machine)")
    args = ap.parse_args()
    cfg = tomllib.loads(Path(args.config).read_text())
    for section, key, value in (("run", "checkpoint", args.checkpoint), ("run", "log", args.log),
                                ("data", "batch", args.batch), ("data", "crop", args.crop)):
        if value is not None:
            cfg[section][key] = value
    device = torch.device(args.device)
    root = Path(args.config).resolve().parent.parent
    torch.set_num_threads(args.threads or cfg["run"]["threads"])
    torch.manual_seed(int(time.time()))

    if args.pack:
        sampler, holdout = PackSampler(Path(args.pack), cfg["data"]["crop"], seed=int(time.time())), []
        print(f"{len(sampler.images)} packed crops to sample", flush=True)
    else:
        cache = expand(cfg["data"]["cache_dir"])
        if not (cache / "index.json").exists():
            print("building crop cache ...", flush=True)
            build_cache((root / cfg["data"]["train_dir"]).resolve(), cache)
        train_dir = (root / cfg["data"]["train_dir"]).resolve()
        holdout = held_out(train_dir, cfg["run"].get("holdout_images", 0))
        excluded = cache_entries(train_dir, holdout)
        if "buckets" in cfg["data"]:
            if {"source_weights", "rescale"} & set(cfg["data"]):
                raise ValueError("[data] source_weights and rescale work with crop, not with buckets")
            sampler = BucketSampler(cache, cfg["data"]["buckets"], seed=int(time.time()), exclude=excluded)
        else:
            sampler = CropSampler(cache, cfg["data"]["crop"], seed=int(time.time()), exclude=excluded,
                                  entry_weights=source_weights(train_dir, cfg["data"].get("source_weights", {})),
                                  scale=tuple(cfg["data"].get("rescale", (1.0, 1.0))))
        print(f"{len(sampler.images)} cached images to sample; held out: {[p.name for p in holdout]}", flush=True)

    model = DCVModel(**cfg["model"]).to(device, memory_format=torch.channels_last)
    ema = DCVModel(**cfg["model"])
    # fused Adam and a foreach EMA: together with torch.compile 0.42 -> 0.36 s/step (2 threads)
    opt = torch.optim.Adam(parameter_groups(model, cfg["optim"]), lr=cfg["optim"]["lr"], fused=True)
    ckpt_path = expand(cfg["run"]["checkpoint"])
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    step, hours, warm_from = 0, 0.0, 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu")
        added = load_run_weights(model, adopt_ladder(state["model"], state["config"], model))
        load_run_weights(ema, adopt_ladder(state["ema"], state["config"], model))
        opt.load_state_dict(extend_optimizer_state(adopt_ladder_moments(state["opt"], state["config"], model), model,
                                                  cfg["optim"]))
        if added:
            print(f"added to the run: {added} (fresh; the other tensors keep their optimizer state)", flush=True)
        step, hours, warm_from = state["step"], state["hours"], state.get("warm_from", 0)
        print(f"resumed at step {step} ({hours:.2f} h)", flush=True)
    else:
        ema.load_state_dict(model.state_dict())
        if args.init:
            step, hours = warm_start(model, ema, Path(os.path.expanduser(args.init)))
            warm_from = step  # a fresh optimizer (and maybe fresh layers): warm up again
    if args.reset_ema:
        ema.load_state_dict(model.state_dict())
    frozen = cfg["optim"].get("frozen_analysis", False)
    if frozen:
        if not (ckpt_path.exists() and state["config"]["optim"].get("frozen_analysis", False)):
            # first step of the fine-tune: the decoder side adapts to the EMA's (better) encoder, and the
            # EMA's encoder then stays equal to the model's
            model.load_state_dict(ema.state_dict())
            print("frozen analysis: starting from the EMA weights", flush=True)
        model.freeze_analysis()
    ema.to(device)
    ema.requires_grad_(False)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    # A slower second average (e.g. 0.9999, ~10k steps) for a run whose learning rate has bottomed out:
    # it starts from the EMA and is exported with `export.py --slow-ema` when it is better.
    slow = None
    if cfg["optim"].get("ema_slow"):
        slow = DCVModel(**cfg["model"])
        resumed = ckpt_path.exists() and "ema_slow" in state
        load_run_weights(slow, state["ema_slow"] if resumed else ema.state_dict())
        slow.to(device).requires_grad_(False)
        slow_params = list(slow.parameters())
    # Inductor fuses GDN and the likelihoods' elementwise work (+9 % steps per hour in the run); the first
    # step compiles for ~40 s. Checkpoints keep the plain module's state_dict.
    forward = torch.compile(model, dynamic=False) if cfg["run"].get("compile", False) else model

    def run_state() -> dict:
        snapshot = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "hours": hours, "warm_from": warm_from, "config": cfg}
        if balance:
            snapshot["quality_loss_avg"] = balance.avg.cpu()
        if slow is not None:
            snapshot["ema_slow"] = slow.state_dict()
        return snapshot

    log = expand(cfg["run"]["log"]).open("a")
    eval_images = [] if args.pack else load_eval_images(root / cfg["run"]["eval_dir"], cfg["run"]["eval_images"])
    holdout_images = [load_eval_image(p, 512) for p in holdout]
    lambdas = torch.tensor(model.lambdas, device=device)
    balance = QualityBalance(len(model.lambdas), device) if cfg["optim"].get("balance_qualities") else None
    if balance and ckpt_path.exists() and "quality_loss_avg" in state:
        balance.avg.copy_(state["quality_loss_avg"])
    t_start, t_saved = time.time(), time.time()
    hours_start = hours
    bf16 = device.type == "cuda" or use_bf16(cfg["run"].get("amp", "auto"))
    print(f"bf16 autocast: {bf16}", flush=True)
    window: list[torch.Tensor] = []  # read every 100 steps: a GPU then never waits for the host
    stop = []  # SIGTERM/SIGINT: finish the step, save, exit
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    while step < args.max_steps and hours - hours_start < args.max_hours and not stop:
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, cfg["optim"], warm_from) * g.get("lr_scale", 1.0)
        x = to_tensor(sampler.batch(cfg["data"]["batch"]), device)
        q = torch.randint(0, len(model.lambdas), (x.shape[0],), device=device)
        if args.fixed_quality:
            q.fill_(args.fixed_quality - 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(x, q, frozen)
        losses = rate_distortion_loss(out, x, lambdas[q], balance.weights(q) if balance else None)
        if balance:
            balance.update(q, losses["rd"])
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["optim"]["clip"])
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - cfg["optim"]["ema"])
            if slow is not None:
                torch._foreach_lerp_(slow_params, model_params, 1 - cfg["optim"]["ema_slow"])
        step += 1
        hours = hours_start + (time.time() - t_start) / 3600
        window.append(torch.stack([losses["rd"].mean(), losses["bpp"], losses["mse"]]).detach())
        if step % 100 == 0:
            loss, bpp, mse = torch.stack(window).mean(0).tolist()
            window.clear()
            rec = {"step": step, "hours": round(hours, 3), **({"device": args.device} if args.pack else {}),
                   "lr": opt.param_groups[0]["lr"],
                   "loss": round(float(loss), 4), "bpp": round(float(bpp), 4),
                   "psnr": round(10 * math.log10(1 / mse), 3)}
            if step % cfg["run"]["eval_every"] == 0 and eval_images:
                # both: early on the EMA lags a fast-improving model (4.2k steps: 23.6 vs 25.4 dB at q4)
                rec["eval"] = evaluate(model, eval_images)
                rec["eval_ema"] = evaluate(ema, eval_images)
                if holdout_images:
                    rec["holdout_ema"] = evaluate(ema, holdout_images)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if time.time() - t_saved > cfg["run"]["save_every_s"]:
            save_checkpoint(ckpt_path, run_state())
            t_saved = time.time()
    save_checkpoint(ckpt_path, run_state())
    if args.export_ema:
        half = {k: v.half().cpu() for k, v in ema.state_dict().items()}
        torch.save({"config": cfg, "step": step, "hours": hours, "state_dict": half}, args.export_ema)


if __name__ == "__main__":
    main()
