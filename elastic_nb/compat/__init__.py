"""Every private name of a third-party library this package relies on, one module per library.

When a pinned version moves, these are the only places to look; each name
has a line on what it is for, and tests/test_compat.py fails with a clear
message naming the one that is gone.
"""
