# SPDX-License-Identifier: MIT
"""What the Python tests share: EVSTEER_TEST_REQUIRE, and skipping."""
import os
import sys

SKIP = 77  # meson's exit code for a skipped test


def required(feature):
    """Does EVSTEER_TEST_REQUIRE name this feature (or "all")?"""
    req = os.environ.get("EVSTEER_TEST_REQUIRE", "")
    return req == "all" or feature in req.split(",")


def skip(prog, feature, why):
    """Skip the whole test, or fail it when the feature is required."""
    if required(feature):
        print(f"{prog}: required (EVSTEER_TEST_REQUIRE) but: {why}")
        sys.exit(1)
    print(f"{prog}: skipped: {why}")
    sys.exit(SKIP)
