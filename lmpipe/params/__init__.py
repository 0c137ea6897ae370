"""Typed params: the sections, their checks, content hashes and what a run is a function of."""
