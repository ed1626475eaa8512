"""singer-sdk's standard tap tests against the bundled sample (the demo's config)."""

from singer_sdk.testing import get_tap_test_class
from tap_peak_attributes.tap import TapPeakAttributes

TestTapPeakAttributes = get_tap_test_class(
    TapPeakAttributes, config={"allow_sample_warehouse": True}
)
