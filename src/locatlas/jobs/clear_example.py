"""Clear one real widefield z-stack file and draw a before/after figure for the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from ..atomic import atomic_path
from .common import log


def read_psf_parameters(path: str | Path) -> dict:
    """Read a PSF description (voxel size in nm, emission wavelength, NA, immersion index)."""
    meta = json.loads(Path(path).read_text())
    try:
        vox = meta["voxel_size_nm"]
        return {
            "pixel_size_um": float(vox["x"]) / 1000.0,
            "z_step_um": float(vox["z"]) / 1000.0,
            "wavelength_um": float(meta["emission_wavelength_nm"]) / 1000.0,
            "na": float(meta["numerical_aperture"]),
            "immersion_index": float(meta["immersion_refractive_index"]),
        }
    except KeyError as err:
        raise ValueError(f"{path}: PSF description lacks {err}") from err


def run_clear_example(image: str, psf: str, figure: str, *, params: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..clearing import clear_image

    stack = tifffile.imread(image).astype(np.float32)
    if stack.ndim != 3:
        raise ValueError(f"{image}: expected a (Z, Y, X) stack, got shape {stack.shape}")
    optics = read_psf_parameters(psf)
    options = {
        k: params[k]
        for k in ("feature_scale_um", "strength", "iterations", "regularization", "threshold")
        if k in params
    }
    cleared = clear_image(stack, mode=params.get("example_mode", "combined"), **optics, **options)
    z = int(np.argmax(stack.reshape(stack.shape[0], -1).std(axis=1)))
    fig, axes = plt.subplots(
        2, 2, figsize=(9, 7), height_ratios=[stack.shape[1], stack.shape[0] * 3]
    )
    # one display range for both, so the removed haze shows as darker background
    lo, hi = 0.0, float(np.percentile(stack, 99.8))
    for col, (title, data) in enumerate((("raw", stack), ("cleared", cleared))):
        axes[0, col].imshow(data[z], cmap="gray", vmin=lo, vmax=hi)
        axes[0, col].set_title(f"{title}: plane z={z}")
        axes[1, col].imshow(
            data.max(axis=1),
            cmap="gray",
            vmin=lo,
            vmax=hi,
            aspect=optics["z_step_um"] / optics["pixel_size_um"],
        )
        axes[1, col].set_title(f"{title}: x-z maximum projection")
        for ax in axes[:, col]:
            ax.set_axis_off()
    fig.suptitle(f"{Path(image).name}: computational clearing")
    fig.tight_layout()
    with atomic_path(figure) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})
    plt.close(fig)
    log.info("clear-example: %s -> %s", image, figure)
