"""Renderers: every output format of a report or a comparison, behind one protocol.

``render(subject, fmt, *, gates=None, to=None, **options) -> str`` is the one
entry point (re-exported as :func:`qaudit.render`); :data:`FORMATS` lists the
formats. See :mod:`qaudit.renderers.base` for the protocol and
:mod:`qaudit.renderers.numbers` for how every renderer spells numbers.

Importing this package is cheap: a renderer's module is imported when its
format is first used.
"""

from qaudit.renderers.base import FORMATS, SUBJECTS, Renderer, get_renderer, render

__all__ = ["FORMATS", "SUBJECTS", "Renderer", "get_renderer", "render"]
