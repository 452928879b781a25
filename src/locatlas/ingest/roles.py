"""Map channel names and wavelengths to roles (nucleus, microtubules, er, protein).

Rules, in order, for each channel (the first that matches wins):

1. the override mapping (channel name, case-insensitive -> role, or ``"ignore"``);
2. transmitted light (brightfield, DIC, phase) -> unmapped;
3. stain / fluorophore / colour keywords in the name or in metadata hints
   (e.g. a dye name): DAPI, Hoechst, blue -> nucleus; tubulin, red -> microtubules;
   calreticulin, ER, yellow -> er; GFP, FITC, antibody, green -> protein;
4. a wavelength (nm) in the name or the metadata: 350-469 -> nucleus,
   470-539 -> protein, 540-619 -> microtubules, 620-700 -> er (excitation lines
   405/488/561/640 and emission peaks 461/520/580/670 fall in the same bins;
   this is the HPA dye set: DAPI, Alexa 488, Alexa 555, Alexa 647);
5. otherwise unmapped (``""``) with a warning.

A role is given to one channel only: a later channel that maps to a role already
taken is left unmapped with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from locatlas import ROLES

#: HPA channel colours -> roles.
COLOUR_ROLES = {"blue": "nucleus", "red": "microtubules", "yellow": "er", "green": "protein"}

#: Values of an override that leave a channel unmapped.
UNMAPPED_VALUES = ("", "ignore", "none")

_TRANSMITTED = re.compile(
    r"bright|\bbf\b|\bdic\b|\bphase\b|\bph\d\b|transmi|\btl\b|\bt-pmt\b", re.IGNORECASE
)

_KEYWORDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), role)
    for p, role in (
        (r"dapi|hoechst|draq5|sytox|nucblue|sir-?dna|\bnuc(?:lei|leus)?\b|\bdna\b", "nucleus"),
        (r"tubulin|microtubul|\btub\b|sir-?tub", "microtubules"),
        (r"calreticulin|\bcalr\b|endoplasmic|\ber\b|er-?tracker|sec61", "er"),
        (
            r"gfp|mneongreen|fitc|\bfam\b|\bvenus\b|antibody|\bprotein\b|\btarget\b"
            r"|alexa\s*(?:fluor)?\s*488|\baf-?488\b",
            "protein",
        ),
        (r"\bblue\b", "nucleus"),
        (r"\bred\b", "microtubules"),
        (r"\byellow\b", "er"),
        (r"\bgreen\b", "protein"),
    )
)

_NUMBER = re.compile(r"(?<![\d.])(\d{3})(?:\.\d+)?(?![\d])")

_BINS = ((350, 470, "nucleus"), (470, 540, "protein"), (540, 620, "microtubules"), (620, 701, "er"))


def role_from_wavelength(nm: float) -> str:
    """Role for a wavelength in nm (excitation or emission); ``""`` if out of range."""
    for lo, hi, role in _BINS:
        if lo <= nm < hi:
            return role
    return ""


def _normalize_override(override: Mapping | None) -> dict[object, str]:
    out: dict[object, str] = {}
    for key, value in (override or {}).items():
        role = "" if value is None else str(value).strip().lower()
        if role in UNMAPPED_VALUES:
            role = ""
        elif role not in ROLES:
            raise ValueError(
                f"roles override for channel {key!r}: {value!r} is not a role "
                f"(expected one of {', '.join(ROLES)} or 'ignore')"
            )
        out[key if isinstance(key, int) else str(key).strip().lower()] = role
    return out


def auto_role(name: str, *, hints: Sequence[str] = (), wavelength_nm: float | None = None) -> str:
    """The role suggested by a channel's name, metadata hints and wavelength.

    Returns ``""`` when nothing matches (rules 2-5 of the module docstring).
    """
    texts = [str(name), *map(str, hints)]
    if any(_TRANSMITTED.search(t) for t in texts):
        return ""
    for text in texts:
        for pattern, role in _KEYWORDS:
            if pattern.search(text):
                return role
    for text in texts:
        for m in _NUMBER.finditer(text):
            role = role_from_wavelength(float(m.group(1)))
            if role:
                return role
    if wavelength_nm is not None and wavelength_nm == wavelength_nm:
        return role_from_wavelength(float(wavelength_nm))
    return ""


def assign_roles(
    names: Sequence[str],
    *,
    hints: Sequence[Sequence[str]] | None = None,
    wavelengths: Sequence[float | None] | None = None,
    override: Mapping | None = None,
    auto: bool = True,
) -> tuple[list[str], list[str]]:
    """Roles of channels, in channel order.

    Parameters
    ----------
    names
        Channel names in source order.
    hints
        Per channel, extra metadata strings (dye, fluorophore, filter names).
    wavelengths
        Per channel, a wavelength in nm (emission preferred) or None.
    override
        Channel name (case-insensitive) or channel index (int) -> role or "ignore".
    auto
        Apply the automatic rules (False for spectral scans, whose channels are
        wavelength bins, not stains).

    Returns
    -------
    roles, warnings
        ``roles[i]`` is a role from :data:`locatlas.ROLES` or ``""`` (unmapped);
        ``warnings`` lists human-readable notes about unmapped or clashing channels.

    Examples
    --------
    >>> assign_roles(["DAPI", "Alexa 488", "Bright"])[0]
    ['nucleus', 'protein', '']
    """
    ov = _normalize_override(override)
    n = len(names)
    hints = hints or [()] * n
    wavelengths = wavelengths or [None] * n
    roles: list[str] = []
    warnings: list[str] = []
    taken: dict[str, str] = {}
    for i, name in enumerate(names):
        key = str(name).strip().lower()
        if i in ov:
            role, how = ov[i], "override"
        elif key in ov:
            role, how = ov[key], "override"
        elif auto:
            role, how = auto_role(name, hints=hints[i], wavelength_nm=wavelengths[i]), "auto"
        else:
            role, how = "", "auto"
        if role and role in taken:
            warnings.append(
                f"channel {i} {name!r} maps to role {role!r} already taken by channel "
                f"{taken[role]!r}: left unmapped"
            )
            role = ""
        elif role:
            taken[role] = str(name)
        elif how == "auto" and auto:
            warnings.append(f"channel {i} {name!r}: no role recognized, left unmapped")
        roles.append(role)
    return roles, warnings
