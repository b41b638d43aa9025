"""Shared test configuration: Hypothesis profiles.

`dev` (the default) is quick for local runs; `ci` is thorough and derandomized, so a CI
failure reproduces. Select with HYPOTHESIS_PROFILE=ci, or CI=true (what CI sets).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=400,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
_default = "ci" if os.environ.get("CI", "").lower() == "true" else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))
