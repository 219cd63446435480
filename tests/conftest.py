"""Shared test configuration: hypothesis profiles.

CI (and every default run) uses the derandomized ``ci`` profile so a failure
reproduces everywhere; ``HYPOTHESIS_PROFILE=explore`` searches more widely.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("explore", deadline=None, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
