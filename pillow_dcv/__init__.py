"""pillow-dcv: a learned image codec for Pillow and imageio.

``import pillow_dcv`` registers the DCV format with Pillow (open, save, ``.dcv``) and, when it is
installed, with imageio (v2 and v3). :func:`register` is idempotent and takes settings.
"""

from __future__ import annotations

import importlib.util

from . import DcvImagePlugin  # noqa: F401  (registers with Pillow on import)
from .codec import CorruptFileError, decode, encode, read_info
from .models import available_models, set_threads

__version__ = "0.1.0"
_IMAGEIO_PLUGIN = "pillow_dcv"  # the name imageio knows our plugin by
__all__ = ["CorruptFileError", "available_models", "decode", "encode", "read_info", "register", "set_threads"]


def register(*, threads: int | None = None) -> None:
    """(Re-)register the format. ``threads``: onnxruntime threads for models loaded afterwards."""
    if threads is not None:
        set_threads(threads)
    _register_imageio()


def _register_imageio() -> None:
    """imageio picks plugins by extension: teach it that .dcv is read and written by our plugin, a
    Pillow plugin that writes a file only once the encoded bytes are complete (imageio_plugin)."""
    if importlib.util.find_spec("imageio") is None:
        return
    import imageio.config as config

    config.known_plugins.setdefault(
        _IMAGEIO_PLUGIN,
        config.PluginConfig(name=_IMAGEIO_PLUGIN, class_name="DcvPlugin", module_name="pillow_dcv.imageio_plugin"),
    )
    if any(ext.extension == ".dcv" for ext in config.extension_list):
        return
    ext = config.FileExtension(
        extension=".dcv", priority=[_IMAGEIO_PLUGIN, "pillow"], name="DCV", description="DCV learned image codec"
    )
    config.extension_list.append(ext)
    config.known_extensions.setdefault(".dcv", []).append(ext)


register()
