"""Engines run a backend somewhere other than this process (`selfgen run --engine ray`).

An engine is itself a :class:`selfgen.backends.base.Backend` wrapping the real one, so the loop,
the filters and the run store do not know where generation happens.
"""
