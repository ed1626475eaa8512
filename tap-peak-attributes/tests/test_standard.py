"""singer-sdk's standard tap tests against the default config (the bundled sample)."""

from singer_sdk.testing import get_tap_test_class
from tap_peak_attributes.tap import TapPeakAttributes

TestTapPeakAttributes = get_tap_test_class(TapPeakAttributes, config={})
