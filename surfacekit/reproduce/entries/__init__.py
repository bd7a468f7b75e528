"""The registry of reproductions: one module per reproduction, each defining ``REPRODUCTION``.

To add one (say ``easgd``): write ``surfacekit/reproduce/entries/easgd.py`` with a ``plan(ctx)``
returning the ``surfacekit`` sweeps and ``analyses/`` calls for ``ctx.scale``, a ``checks(ctx)``
returning :class:`~surfacekit.reproduce.entry.Check` rows (published value, source, ours, CI,
PASS/FAIL), and ``REPRODUCTION = Reproduction(name="easgd", ...)``; then add ``"easgd"`` to
``NAMES`` below (the report's order). docs/reproduce.md walks through an example.
"""

from __future__ import annotations

import importlib

from surfacekit.reproduce.entry import Reproduction

NAMES = ("toy_surfaces", "choromanska", "spinglass", "dauphin", "training_methods", "penalty", "interpolation", "slices",
         "edge_of_stability", "easgd")


def registry() -> dict[str, Reproduction]:
    """Every registered reproduction by name, in report order.

    Raises:
        ValueError: a module's ``REPRODUCTION.name`` differs from its module name.
    """
    found = {}
    for name in NAMES:
        entry = importlib.import_module(f"{__name__}.{name}").REPRODUCTION
        if entry.name != name:
            raise ValueError(f"{__name__}.{name} defines REPRODUCTION.name={entry.name!r}; it must equal the module name")
        found[name] = entry
    return found
