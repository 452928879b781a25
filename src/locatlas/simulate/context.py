"""Everything a channel or a protein pattern needs to know about a field.

A :class:`FieldContext` wraps a :class:`~.layout.Layout` with cached derived maps
(cytoplasm mask, cell boundaries, per-cell slices, moving textures).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy import ndimage

from .layout import Layout, fourier_texture, nucleus_radius_px_towards
from .textures import lookup_shifted


class FieldContext:
    """Derived, cached views of one field's layout at one time point.

    Parameters
    ----------
    layout
        The field's cells and nuclei.
    seed
        The field seed (textures are fixed to the field at time 0 and move with cells).
    psf_sigma_px
        Optical blur (Gaussian sigma, px) per channel in ROLES order.
    """

    def __init__(self, layout: Layout, *, seed: int, psf_sigma_px: tuple[float, ...]):
        self.layout = layout
        self.seed = int(seed)
        self.psf_sigma_px = psf_sigma_px
        self.ps = layout.pixel_size_um
        self.shape = layout.shape
        self._tex: dict = {}

    # -- masks -------------------------------------------------------------------
    @property
    def cells(self) -> np.ndarray:
        return self.layout.cells

    @property
    def nuclei(self) -> np.ndarray:
        return self.layout.nuclei

    @property
    def cell(self) -> dict[str, np.ndarray]:
        return self.layout.cell

    @cached_property
    def cytoplasm(self) -> np.ndarray:
        return (self.cells > 0) & (self.nuclei == 0)

    @cached_property
    def slices(self) -> list:
        """Bounding-box slices of every cell id (None where absent), index = id - 1."""
        return ndimage.find_objects(self.cells, max_label=self.layout.n)

    @cached_property
    def boundary(self) -> np.ndarray:
        """Bool (Y, X): cell pixels with a 4-neighbour of another label (incl. background)."""
        c = self.cells
        b = np.zeros(c.shape, dtype=bool)
        b[1:, :] |= c[1:, :] != c[:-1, :]
        b[:-1, :] |= c[:-1, :] != c[1:, :]
        b[:, 1:] |= c[:, 1:] != c[:, :-1]
        b[:, :-1] |= c[:, :-1] != c[:, 1:]
        return b & (c > 0)

    @cached_property
    def contact(self) -> np.ndarray:
        """Bool (Y, X): boundary pixels that touch another *cell* (cell-cell junctions)."""
        c = self.cells
        b = np.zeros(c.shape, dtype=bool)
        for a, o in (
            ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
            ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
            ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
            ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ):
            b[a] |= (c[a] != c[o]) & (c[o] > 0)
        return b & (c > 0)

    @cached_property
    def thickness(self) -> np.ndarray:
        """Relative cell thickness (Y, X) in [0.3, 1]: thick near the nucleus, thin at the edge."""
        ext = self.cell["ext"].astype(np.float32)[self.cells]
        r = np.clip(self.layout.rho / np.maximum(ext, 1e-3), 0.0, 1.0)
        t = 0.3 + 0.7 * np.sqrt(1.0 - r * r)
        # Mitotic cells round up: about twice as thick.
        t = t * np.where(self.cell["mitotic"], 1.8, 1.0).astype(np.float32)[self.cells]
        return np.where(self.cells > 0, t, 0.0).astype(np.float32)

    @cached_property
    def nucleus_q(self) -> np.ndarray:
        """Normalised radius inside each nucleus (0 centre, 1 edge); 0 outside nuclei."""
        r = self.cell["r_nuc_um"].astype(np.float32)[self.nuclei]
        q = 1.0 + self.layout.dn_um / np.maximum(r, 1e-3)
        return np.where(self.nuclei > 0, np.clip(q, 0.0, 1.0), 0.0).astype(np.float32)

    # -- textures ----------------------------------------------------------------
    def texture(self, key: int, scale_um: float, highpass_um: float | None = None) -> np.ndarray:
        """Unit-variance texture fixed to the cells (moves with them over time)."""
        k = (key, scale_um, highpass_um)
        if k not in self._tex:
            base = fourier_texture(
                self.shape,
                self.seed,
                key,
                scale_px=scale_um / self.ps,
                highpass_px=None if highpass_um is None else highpass_um / self.ps,
            )
            sh = self.layout.shift_px
            self._tex[k] = lookup_shifted(base, self.cells, sh[:, 0], sh[:, 1])
        return self._tex[k]

    # -- geometry ----------------------------------------------------------------
    def mtoc(self, i: int) -> tuple[float, float]:
        """(y, x) px of cell ``i``'s microtubule-organising centre, beside the nucleus."""
        a = self.cell["polarity"][i]
        r = nucleus_radius_px_towards(self.cell, i, a, self.ps) + 0.9 / self.ps
        return (
            float(self.cell["ncy_t"][i] + r * np.sin(a)),
            float(self.cell["ncx_t"][i] + r * np.cos(a)),
        )

    def poles(self, i: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two spindle poles (y, x) px of mitotic cell ``i``, either side of its
        chromatin plate."""
        a = self.cell["nuc_orient"][i] + np.pi / 2
        d = nucleus_radius_px_towards(self.cell, i, a, self.ps) + 2.5 / self.ps
        cy, cx = self.cell["ncy_t"][i], self.cell["ncx_t"][i]
        dy, dx = d * np.sin(a), d * np.cos(a)
        return (float(cy + dy), float(cx + dx)), (float(cy - dy), float(cx - dx))

    def sample_points(
        self,
        i: int,
        n: int,
        rng: np.random.Generator,
        *,
        region: str = "cytoplasm",
        weight=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` random sub-pixel positions (y, x) inside cell ``i``.

        ``region``: ``'cytoplasm'``, ``'nucleus'``, ``'nucleoplasm'`` (nucleus
        without nucleoli) or ``'cell'``. ``weight(ys, xs)`` -> acceptance
        probability in [0, 1] for a preference (e.g. perinuclear).
        """
        sl = self.slices[i - 1]
        if sl is None or n <= 0:
            return np.zeros(0), np.zeros(0)
        y0, x0 = sl[0].start, sl[1].start
        h, w = sl[0].stop - y0, sl[1].stop - x0
        m = 8 * n + 16
        ys = y0 + rng.uniform(0, h, m)
        xs = x0 + rng.uniform(0, w, m)
        yi = ys.astype(np.int64)
        xi = xs.astype(np.int64)
        own = self.cells[yi, xi] == i
        if region == "cytoplasm":
            ok = own & (self.nuclei[yi, xi] == 0)
        elif region == "nucleus":
            ok = own & (self.nuclei[yi, xi] == i)
        elif region == "nucleoplasm":
            ok = (
                own
                & (self.nuclei[yi, xi] == i)
                & (self.layout.nucleoli[yi, xi] < 0.2)
                & (self.nucleus_q[yi, xi] < 0.93)
            )
        elif region == "cell":
            ok = own
        else:
            raise ValueError(f"unknown region {region!r}")
        if weight is not None:
            ok &= rng.uniform(0, 1, m) < weight(ys, xs)
        ys, xs = ys[ok][:n], xs[ok][:n]
        return ys, xs
