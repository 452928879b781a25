"""The localization network: a small residual CNN over single-cell crops.

Input is one crop per cell, ordered (N, C, S, S): the image channels in the
model's channel-role order (``locatlas.ROLES`` restricted to the roles it was
trained with), each scaled to ~0..1 by its field's robust range, optionally
followed by the cell and nucleus masks as two 0/1 channels. The network
normalizes every image channel per cell itself (``norm="cell_max"``), so the
same weights see the same numbers at training and inference time.

Outputs are per-class logits (multi-label: one sigmoid per class) and an
L2-normalized embedding from a projection head that a metric-learning loss
(ArcFace-style, against the learned class centres ``arc_centres``) shapes.

Cost: the stem has stride 2 and every later stage halves the grid again, so a
128² crop is seen at 64², 32², 16², 8² and 4²; with the default widths
(32, 48, 64, 96, 128) it is ~0.55 M parameters and runs at a few hundred cells
per second per CPU core in float32 (see ``benchmarks/localize.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from locatlas.localize.morphology import dilate

#: Per-cell normalizations the network knows.
NORMS = ("cell_max", "none")


def default_widths(crop_size: int) -> tuple[int, ...]:
    """Stage widths for a crop size: five stages for 64 px, one more (16 wide, at
    full stem resolution) per doubling of the crop size, so the deepest grid
    stays ~2×2 to 4×4 and the cost per cell grows slowly with the size."""
    extra = max(0, round(math.log2(max(crop_size, 1) / 64)))
    return (16,) * min(extra, 1) + (32,) * max(0, extra - 1) + (32, 48, 64, 96, 128)


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a :class:`LocalizationNet` (stored in the model spec).

    Attributes
    ----------
    in_roles : channel roles of the image channels, in input order.
    n_classes : number of output classes.
    use_masks : whether the cell and nucleus masks are two extra input channels.
    widths : output channels of the stages; stage ``i`` runs at 1/2**(i+1) of the crop size.
    stem_stride : stride of the stem convolution (1 or 2).
    embedding_dim : size of the L2-normalized embedding.
    dropout : dropout before the classifier.
    norm : per-cell normalization of the image channels (``"cell_max"`` or ``"none"``).
    """

    in_roles: tuple[str, ...]
    n_classes: int
    use_masks: bool = True
    widths: tuple[int, ...] = (32, 48, 64, 96, 128)
    stem_stride: int = 2
    embedding_dim: int = 128
    dropout: float = 0.2
    norm: str = "cell_max"

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_roles", tuple(self.in_roles))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.in_roles:
            raise ValueError("NetConfig.in_roles: at least one channel role is needed")
        if self.n_classes < 1:
            raise ValueError(f"NetConfig.n_classes must be >= 1, got {self.n_classes}")
        if self.norm not in NORMS:
            raise ValueError(f"NetConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"NetConfig.stem_stride must be 1 or 2, got {self.stem_stride}")
        if not self.widths:
            raise ValueError("NetConfig.widths: at least one stage is needed")

    @property
    def in_channels(self) -> int:
        return len(self.in_roles) + (2 if self.use_masks else 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["in_roles"] = list(self.in_roles)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class _Block(nn.Module):
    """Residual basic block: conv3-BN-GELU-conv3-BN + shortcut, GELU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if cin == cout and stride == 1:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.gelu(y + self.shortcut(x))


def normalize_cells(
    x: torch.Tensor, n_image: int, *, use_mask: bool = True, eps: float = 0.02
) -> torch.Tensor:
    """Divide each image channel of each crop by its maximum over the cell.

    With ``use_mask`` the maximum is taken inside the cell mask (channel
    ``n_image``, dilated by one pixel), so a brighter neighbour does not set the
    scale of the cell in the centre; without it over the whole crop. The plain
    maximum (not a smoothed one) keeps tiny bright structures (centrosomes,
    bodies) at full scale. ``eps`` (in field-range units) keeps empty channels
    from being blown up into noise; values are clipped to [0, 2].

    Parameters
    ----------
    x : (N, C, S, S) float tensor; the first ``n_image`` channels are images,
        channel ``n_image`` is the cell mask when ``use_mask``.
    n_image : number of image channels (the rest, e.g. masks, pass unchanged).
    """
    img = x[:, :n_image]
    if use_mask and x.shape[1] > n_image:
        cell = dilate(x[:, n_image : n_image + 1], 1)
        has = cell.amax(dim=(2, 3), keepdim=True) > 0
        cell = torch.where(has, cell, torch.ones_like(cell))
        scale = (img * cell).amax(dim=(2, 3), keepdim=True)
    else:
        scale = img.amax(dim=(2, 3), keepdim=True)
    if n_image == x.shape[1]:
        return (img / scale.clamp_min(eps)).clamp(0.0, 2.0)
    # written into one output (same layout as x) rather than a division, a clamp and
    # a concatenation as three full-batch copies; x is data, never a leaf that needs grad
    out = torch.empty_like(x)
    torch.div(img, scale.clamp_min(eps), out=out[:, :n_image]).clamp_(0.0, 2.0)
    out[:, n_image:] = x[:, n_image:]
    return out


class LocalizationNet(nn.Module):
    """Multi-label localization CNN with a projection head for embeddings.

    Parameters
    ----------
    config : :class:`NetConfig` (or the keyword arguments of one).

    Notes
    -----
    ``forward(x)`` takes (N, C, S, S) float input, ``C == config.in_channels``
    (image channels first, then cell and nucleus masks if ``use_masks``), and
    returns ``(logits (N, K), embedding (N, D))``; the embedding has unit norm.
    Any S >= ``stem_stride * 2**(len(widths)-1)`` works (strided convolutions
    round odd sizes up).
    """

    def __init__(self, config: NetConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = NetConfig(**kwargs)
        elif kwargs:
            raise TypeError("give either a NetConfig or keyword arguments, not both")
        self.config = config
        w0 = config.widths[0]
        s = config.stem_stride
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w0, 3, s, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.GELU(),
        )
        blocks = []
        cin = w0
        for i, w in enumerate(config.widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        feat = 2 * cin  # global average + global max pooling
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(feat, config.n_classes)
        self.projection = nn.Sequential(
            nn.Linear(feat, feat, bias=False),
            nn.BatchNorm1d(feat),
            nn.GELU(),
            nn.Linear(feat, config.embedding_dim),
        )
        # Class centres on the unit sphere for the ArcFace-style loss (also usable
        # as class prototypes for embedding look-ups).
        self.arc_centres = nn.Parameter(torch.empty(config.n_classes, config.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch: blocks start as identities.
        for b in self.blocks:
            nn.init.zeros_(b.bn2.weight)
        nn.init.normal_(self.arc_centres, std=1.0)
        # A negative classifier bias: most classes are absent in most cells.
        nn.init.constant_(self.classifier.bias, -2.0)

    @property
    def n_image_channels(self) -> int:
        return len(self.config.in_roles)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, 2 * widths[-1]) before the heads."""
        if self.config.norm == "cell_max":
            x = normalize_cells(x, self.n_image_channels, use_mask=self.config.use_masks)
        y = self.blocks(self.stem(x))
        return torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        logits = self.classifier(self.dropout(f))
        emb = F.normalize(self.projection(f).float(), dim=1)
        return logits.float(), emb


def _fold_batchnorm(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """``bn(layer(x))`` with frozen statistics as one layer: scaled weights plus a bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = copy.deepcopy(layer)
    fused.weight = nn.Parameter(layer.weight * scale.reshape(-1, *[1] * (layer.weight.dim() - 1)))
    bias = shift if layer.bias is None else layer.bias * scale + shift
    fused.bias = nn.Parameter(bias)
    return fused


def fuse_for_inference(model: LocalizationNet) -> LocalizationNet:
    """An inference copy of ``model`` with every batch norm folded into the layer before it.

    Same outputs up to float rounding (~1e-6) at ~20 % less CPU time: a batch norm
    with frozen statistics is an affine map that the preceding convolution or linear
    layer can absorb, instead of an extra pass over every activation.
    """
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        conv, bn, act = net.stem
        net.stem = nn.Sequential(_fold_batchnorm(conv, bn), act)
        for block in net.blocks:
            block.conv1, block.bn1 = _fold_batchnorm(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = _fold_batchnorm(block.conv2, block.bn2), nn.Identity()
            if isinstance(block.shortcut, nn.Sequential):
                block.shortcut = _fold_batchnorm(*block.shortcut)
        linear, bn, act, out = net.projection
        net.projection = nn.Sequential(_fold_batchnorm(linear, bn), act, out)
    return net
