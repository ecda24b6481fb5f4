"""Renderers: every output format of a report or a comparison."""
