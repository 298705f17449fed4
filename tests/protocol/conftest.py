"""Hypothesis profiles for the protocol tests.

The default profile keeps the whole protocol suite well under a minute on two
cores. Set ``RS_SOAK=1`` (or a number, used as the example count) for a long
soak run, e.g. ``RS_SOAK=20000 python -m pytest tests/protocol -q``.
"""

from __future__ import annotations

import os
import warnings

from hypothesis import HealthCheck, settings

_soak = os.environ.get("RS_SOAK", "")

settings.register_profile(
    "rs-protocol",
    max_examples=100,
    deadline=None,  # slow CI machines must not turn into flaky failures
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "rs-soak",
    max_examples=int(_soak) if _soak.isdigit() and int(_soak) > 1 else 5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("rs-soak" if _soak else "rs-protocol")

# When a Hypothesis test fails, its pytest plugin imports hypothesis.extra._patching,
# which imports libcst, which subclasses the deprecated mypy_extensions.TypedDict.
# Under filterwarnings = error that DeprecationWarning becomes an INTERNALERROR that
# aborts the whole run and hides the real failure. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import hypothesis.extra._patching  # noqa: F401
    except ImportError:  # libcst not installed: the plugin skips patches too
        pass
