"""The bundled model: ONNX transforms run by onnxruntime, the integer prior and the entropy tables.

One onnxruntime session per transform per process, created lazily under a lock (session creation
is not thread-safe; ``run`` is, and releases the GIL).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from .entropy import Tables
from .prior import IntegerHyperSynthesis

MODELS_DIR = Path(__file__).resolve().parent / "models"
# A one-node MatMulInteger graph (uint8 x int8 -> int32) for the integer prior's GEMMs: onnxruntime runs
# it on its own threads with VNNI where the CPU has it (~4x a float32 GEMM), and numpy's BLAS threads,
# which kept spinning after each call, no longer slow the synthesis that follows.
GEMM_DIR = Path(__file__).resolve().parent / "gemm"
DEFAULT_MODEL = "dcv-ms2-s30"
MODEL_FILES = ("analysis.onnx", "synthesis.onnx", "prior.npz")
SHARED_GRAPHS = ("matmul_integer", "post_filter", "gram")  # in GEMM_DIR: the same for every model

_lock = threading.Lock()
_models: dict[str, Model] = {}
_settings = {"threads": 0}  # 0: one per core
_worker = threading.local()  # a decoder worker's own share of the threads (use_threads_in_this_thread)


def set_threads(threads: int) -> None:
    """Threads used by onnxruntime for models loaded from now on (0 = one per core)."""
    if threads < 0:
        raise ValueError("threads must be >= 0")
    _settings["threads"] = threads


def thread_count() -> int:
    """The threads the codec may use: set_threads' setting, or one per core."""
    return _settings["threads"] or os.cpu_count() or 1


def use_threads_in_this_thread(threads: int) -> None:
    """Sessions run from the calling thread use `threads` threads unless a call asks otherwise: the
    decoder's workers each take their share of the cores (a ThreadPoolExecutor initializer)."""
    _worker.threads = threads


def available_models() -> list[str]:
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "prior.npz").exists())


def get_model(model_id: str = DEFAULT_MODEL) -> Model:
    with _lock:
        model = _models.get(model_id)
        if model is None:
            folder = MODELS_DIR / model_id
            if "/" in model_id or "\\" in model_id or not (folder / "prior.npz").exists():
                raise KeyError(model_id)
            model = _models[model_id] = Model(folder)
        return model


def _tables(params: dict[str, np.ndarray], prefix: str) -> Tables:
    counts = np.split(params[f"{prefix}_counts"].astype(np.int64), np.cumsum(params[f"{prefix}_lengths"])[:-1])
    return Tables(counts, params[f"{prefix}_offsets"])


class Model:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "model.json").read_text())
        self.model_id = folder.name
        digest = hashlib.sha256()
        for name in MODEL_FILES:
            digest.update((folder / name).read_bytes())
        self.hash = digest.digest()
        with np.load(folder / "prior.npz") as f:
            params = {k: f[k] for k in f.files}
        self.prior = IntegerHyperSynthesis(params, matmul=self._matmul)
        self.y_tables = _tables(params, "y")
        self.z_tables = _tables(params, "z")
        # from dcv-ms2-s17 on: one row of z tables per whole quality (spec sections 5.3 and 7.3)
        self.z_rows = int(params.get("z_rows", 1))
        self.z_channels = len(self.z_tables.offsets) // self.z_rows
        self.log_gain = params["gain"].astype(np.float64)
        self.log_inv_gain = params["inv_gain"].astype(np.float64)
        self.latent_channels = self.log_gain.shape[1]
        # models from dcv-ms2-s14 on: where in its bin the synthesis takes a latent (spec section 5.6)
        offsets = params.get("recon_offsets")
        self.recon_offsets = None if offsets is None else offsets.astype(np.float64)
        self._session_lock = threading.Lock()
        self._sessions: dict[str, object] = {}

    def gains(self, quality: float) -> tuple[np.ndarray, np.ndarray]:
        """Gain vectors for quality in [1, 8]: geometric interpolation between the learned ones."""
        i = min(int(np.floor(quality)), len(self.log_gain)) - 1
        t = quality - (i + 1)
        j = min(i + 1, len(self.log_gain) - 1)
        g = (1 - t) * self.log_gain[i] + t * self.log_gain[j]
        ig = (1 - t) * self.log_inv_gain[i] + t * self.log_inv_gain[j]
        shape = (1, self.latent_channels, 1, 1)
        return np.exp(g).astype(np.float32).reshape(shape), np.exp(ig).astype(np.float32).reshape(shape)

    def rd_lambda(self, quality: float) -> float:
        """The training loss's lambda (bpp + lambda * MSE on 0..255) at quality: geometric between the
        ladder's, like the gains. The encoder weighs its choices with it."""
        log_lambdas = np.log(self.meta["config"]["lambdas"])
        return float(np.exp(np.interp(quality, np.arange(1, len(log_lambdas) + 1), log_lambdas)))

    def z_row(self, quality: float) -> int:
        """The row of z tables that a file of header quality `quality` (a multiple of 1/256) uses: the
        nearest whole quality's, halves up."""
        return min(self.z_rows, max(1, int(np.floor(quality + 0.5)))) - 1

    def session(self, name: str, optimization: str | None = None, threads: int | None = None):
        if threads is None:
            threads = getattr(_worker, "threads", None)
        key = f"{name}:{optimization}:{threads}"
        with self._session_lock:
            s = self._sessions.get(key)
            if s is None:
                s = self._sessions[key] = self._make_session(name, optimization, threads)
            return s

    def _make_session(self, name: str, optimization: str | None, threads: int | None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        level = optimization or "ORT_ENABLE_ALL"
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        n = threads if threads is not None else thread_count()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # No memory pattern: it is planned on a shape's first run and allocated afresh on its second, so
        # the second image of a size paid the page faults again (Kodak, 2 threads: 325-359 -> 295-307
        # ms/Mpx for the second decode in a process; the first is unchanged, training/LOG.md session 13).
        opts.enable_mem_pattern = False
        # The memory arena stays on: without it every tensor is a fresh allocation whose page faults
        # cost a third of the synthesis time, and a 24 MP decode peaks at ~720 MB either way.
        path = GEMM_DIR / f"{name}.onnx" if name in SHARED_GRAPHS else self.folder / f"{name}.onnx"
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        (c,) = self.session("matmul_integer").run(None, {"a": a, "b": b})
        return c

    def gram(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a^T b in float64 on onnxruntime's threads (the encoder's post-filter statistics)."""
        (c,) = self.session("gram").run(None, {"a": np.ascontiguousarray(a), "b": np.ascontiguousarray(b)})
        return c

    def analysis(self, x: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, z = self.session("analysis").run(None, {"x": x, "gain": gain})
        return y, z

    def synthesis(self, y_hat: np.ndarray, inv_gain: np.ndarray, **session_args) -> np.ndarray:
        (x_hat,) = self.session("synthesis", **session_args).run(None, {"y_hat": y_hat, "inv_gain": inv_gain})
        return x_hat

    def post_filter(self, x_hat: np.ndarray, weights: np.ndarray, bias: np.ndarray, **session_args) -> np.ndarray:
        """The synthesis output (1, 3, H, W) through n/3 post-filters at once (spec 4.5, 4.6): weights
        (n, 3, 5, 5) and bias (n,) -> (1, n, H, W)."""
        (y,) = self.session("post_filter", **session_args).run(None, {"x": x_hat, "w": weights, "b": bias})
        return y

    @cached_property
    def size_bytes(self) -> int:
        return sum((self.folder / n).stat().st_size for n in MODEL_FILES)
