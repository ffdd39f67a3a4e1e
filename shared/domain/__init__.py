"""The domain: typed events, one vocabulary, and the pure plans of every flow.

Rule: no I/O and no `azure.*` import (tests/test_layers.py). A plan takes facts and returns a
decision as a value, with a coded reason; a service executes it.
"""
