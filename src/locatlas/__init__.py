"""locatlas: from raw microscope images of cells to a protein-localization atlas."""

__version__ = "0.1.0"

#: Channel roles in their canonical order. Every image array that crosses a
#: stage boundary is ordered (c, ...) with its channels in this order, restricted
#: to the roles that are present.
ROLES = ("nucleus", "microtubules", "er", "protein")
