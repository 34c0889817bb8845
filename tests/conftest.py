from __future__ import annotations

from hypothesis import settings

# Property tests explore a fixed, reproducible set of examples: CI is never red by chance.
settings.register_profile("workbench", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("workbench")
