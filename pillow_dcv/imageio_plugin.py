"""imageio's Pillow plugin for .dcv files, writing whole files only.

imageio's own Pillow plugin opens the target file before Pillow's save runs, so a rejected option
(``quality=99``) or a failed encode leaves an empty file behind, or truncates the file that was
there. This plugin encodes into memory first and touches the target only with complete bytes.
imageio imports it by name (``pillow_dcv._register_imageio``), so ``import pillow_dcv`` does not
import imageio.
"""

from __future__ import annotations

import io

from imageio.plugins.pillow import PillowPlugin


class DcvPlugin(PillowPlugin):
    """Reads as imageio's Pillow plugin does; writes a file only once its bytes are complete."""

    def _flush_writer(self) -> None:
        if not self.images_to_write:
            return
        primary, *others = self.images_to_write
        args = dict(self.save_args)
        if others:  # Pillow's DCV writer refuses several frames with a ValueError
            args.update(save_all=True, append_images=others)
        encoded = io.BytesIO()
        try:
            primary.save(encoded, **args)
        finally:
            self.images_to_write.clear()
            self.save_args.clear()
        self._request.get_file().write(encoded.getvalue())
