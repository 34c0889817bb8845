"""Small helpers every stage shares, with no workbench imports above :mod:`workbench.paths`.

:mod:`.hashing` (digests of bytes, files, source code), :mod:`.io` (atomic writes), :mod:`.signed` (files the
workbench writes and later trusts, signed with this installation's key).
"""
