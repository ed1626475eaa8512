"""singer-sdk's standard target tests, curated, each validated against what Braze stored.

Every test of the SDK's suite is here except:
- `TargetRecordMissingKeyProperty`: the SDK expects a crash; target-braze writes such a
  record to the rejects output with a reason instead (tested below as its own case).
- `TargetPrimaryKeyUpdates` and `TargetNoPrimaryKeys`: Braze has no primary keys; users
  are identified by `identifier_property`, whatever the stream's key properties say
  (covered by `no_primary_keys` below with an explicit identifier).
- `TargetSchemaNoProperties`: its records carry no identifier, so nothing can be sent to
  Braze; target-braze stops at the SCHEMA with a message naming identifier_property.
- `TargetMultipleStateMessages`: the SDK expects every STATE relayed; target-braze relays
  the latest *confirmed* one, so intermediate states may be collapsed (checked below).
- `TargetRecordBeforeSchemaTest`: the SDK expects its own `RecordsWithoutSchemaException`;
  target-braze reads its input itself and stops with an `InputError` naming the line and
  the stream (checked below).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from braze_sandbox.testing import SandboxProcess
from braze_target_harness import API_KEY
from singer_sdk.testing import SuiteConfig, TargetTestRunner, get_target_test_class
from singer_sdk.testing.suites import SingerTestSuite
from singer_sdk.testing.target_tests import (
    TargetArrayData,
    TargetCamelcaseComplexSchema,
    TargetCamelcaseTest,
    TargetCliPrintsTest,
    TargetDuplicateRecords,
    TargetEncodedStringData,
    TargetInvalidSchemaTest,
    TargetOptionalAttributes,
    TargetRecordMissingOptionalFields,
    TargetRecordMissingRequiredProperty,
    TargetSchemaUpdates,
    TargetSpecialCharsInAttributes,
)
from singer_sdk.testing.templates import TargetFileTestTemplate
from target_braze.errors import ConfigError, InputError
from target_braze.target import TargetBraze

REJECTS = Path("output/standard-suite-rejects.jsonl")
STREAM_IDENTIFIERS = {
    "TestCamelcase": "Id",
    "ForecastingTypeToCategory": "Id",
    "test:SpecialChars!in?attributes": "_id",
}


def custom_attributes(sandbox: SandboxProcess, external_id: str) -> dict[str, Any]:
    profile = sandbox.profile(external_id)
    assert profile is not None, f"user {external_id} is not in Braze"
    return profile.get("custom_attributes", {})


def expected_profiles(test: TargetFileTestTemplate) -> dict[str, dict[str, Any]]:
    """Replay the test's Singer file as Braze would apply it: last value wins per user."""
    expected: dict[str, dict[str, Any]] = {}
    for line in test.singer_filepath.read_text(encoding="utf-8").splitlines():
        message = json.loads(line)
        if message.get("type") != "RECORD":
            continue
        identifier = STREAM_IDENTIFIERS.get(message["stream"], "id")
        record = dict(message["record"])
        user = str(record.pop(identifier))
        expected.setdefault(user, {}).update(record)
    return expected


class SandboxMatchesInput(TargetFileTestTemplate):
    """Validate: every user of the input is in Braze with exactly the input's last values."""

    def validate(self) -> None:
        expected = expected_profiles(self)
        assert expected, "the test input has no records"
        for user, attributes in expected.items():
            assert custom_attributes(self.resource, user) == attributes, user


class ArrayDataLands(SandboxMatchesInput, TargetArrayData):
    pass


class CamelcaseLands(SandboxMatchesInput, TargetCamelcaseTest):
    pass


class DuplicateRecordsLastValueWins(SandboxMatchesInput, TargetDuplicateRecords):
    def validate(self) -> None:
        super().validate()
        assert custom_attributes(self.resource, "1")["metric"] == 100


class EncodedStringsLandExactly(SandboxMatchesInput, TargetEncodedStringData):
    pass


class OptionalAttributesAreNotInvented(SandboxMatchesInput, TargetOptionalAttributes):
    def validate(self) -> None:
        super().validate()
        assert "optional" not in custom_attributes(self.resource, "2")


class MissingOptionalFieldsAreNotInvented(SandboxMatchesInput, TargetRecordMissingOptionalFields):
    pass


class SchemaUpdatesAddAttributes(SandboxMatchesInput, TargetSchemaUpdates):
    def validate(self) -> None:
        super().validate()
        assert custom_attributes(self.resource, "6")["a4"] == {"id": 4, "value": 444}


class SpecialCharsInNestedKeys(SandboxMatchesInput, TargetSpecialCharsInAttributes):
    pass


class StatesAreRelayedInOrderUpToTheLast(TargetFileTestTemplate):
    name = "multiple_state_messages"

    def test(self) -> None:
        self.runner.sync_all()

    def validate(self) -> None:
        sent = [
            {"test_multiple_state_messages_a": 1, "test_multiple_state_messages_b": 0},
            {"test_multiple_state_messages_a": 2, "test_multiple_state_messages_b": 1},
            {"test_multiple_state_messages_a": 3, "test_multiple_state_messages_b": 2},
            {"test_multiple_state_messages_a": 5, "test_multiple_state_messages_b": 3},
            {"test_multiple_state_messages_a": 5, "test_multiple_state_messages_b": 6},
        ]
        emitted = [json.loads(m) if isinstance(m, str) else m for m in self.runner.state_messages]
        assert emitted, "no STATE relayed"
        assert emitted[-1] == sent[-1]
        assert [s for s in sent if s in emitted] == emitted  # in order, none invented
        # Both streams write user 6; Braze must end with the value sent last (stream a).
        assert custom_attributes(self.resource, "6")["metric"] == 600


class MissingKeyPropertyIsRejectedNotSent(TargetFileTestTemplate):
    name = "record_missing_key_property"

    def validate(self) -> None:
        rejected = [json.loads(line) for line in REJECTS.read_text().splitlines()]
        assert any(r["record"] == {"metric": 8214} for r in rejected)
        assert self.resource.stats()["requests"] == 0


class NoPrimaryKeysStillIdentifiedById(SandboxMatchesInput):
    name = "no_primary_keys"


class RecordBeforeSchemaFailsNamingTheLine(TargetFileTestTemplate):
    """Replaces `TargetRecordBeforeSchemaTest`: one clear error instead of the SDK's."""

    name = "record_before_schema"

    def test(self) -> None:
        with pytest.raises(InputError, match=r"line 1: a RECORD of stream .* before its SCHEMA"):
            super().test()


class StreamWithoutIdentifierFailsClearly(TargetFileTestTemplate):
    """Replaces `TargetSchemaNoProperties`: its records carry no identifier at all."""

    name = "schema_no_properties"

    def test(self) -> None:
        with pytest.raises(ConfigError, match="has no property 'id' for identifier_property"):
            super().test()


SUITE = SingerTestSuite(
    kind="target",
    tests=[
        ArrayDataLands,
        TargetCamelcaseComplexSchema,  # a SCHEMA only: accepting it is the test
        CamelcaseLands,
        TargetCliPrintsTest,
        DuplicateRecordsLastValueWins,
        EncodedStringsLandExactly,
        TargetInvalidSchemaTest,
        MissingKeyPropertyIsRejectedNotSent,
        StatesAreRelayedInOrderUpToTheLast,
        NoPrimaryKeysStillIdentifiedById,
        OptionalAttributesAreNotInvented,
        RecordBeforeSchemaFailsNamingTheLine,
        MissingOptionalFieldsAreNotInvented,
        TargetRecordMissingRequiredProperty,
        StreamWithoutIdentifierFailsClearly,
        SchemaUpdatesAddAttributes,
        SpecialCharsInNestedKeys,
    ],
)

BASE_CONFIG: dict[str, Any] = {
    "identifier_property": "id",
    "stream_mappings": {
        stream: {"identifier_property": prop} for stream, prop in STREAM_IDENTIFIERS.items()
    },
    "rejected_records_path": str(REJECTS),
    "max_rejected_ratio": 1.0,
}

StandardBase = get_target_test_class(
    TargetBraze,
    config={**BASE_CONFIG, "dry_run": True, "rest_endpoint": "US-03"},  # collection only
    custom_suites=[SUITE],
    include_target_tests=False,
    suite_config=SuiteConfig(),
)


class TestTargetBrazeStandard(StandardBase):  # type: ignore[misc,valid-type]
    """The curated suite, each run against a fresh Braze sandbox."""

    @pytest.fixture(scope="class")
    @classmethod
    def sandbox(cls) -> Iterator[SandboxProcess]:
        with SandboxProcess(api_key=API_KEY) as process:
            yield process

    @pytest.fixture
    def resource(self, sandbox: SandboxProcess) -> SandboxProcess:
        sandbox.reset()
        REJECTS.unlink(missing_ok=True)
        return sandbox

    @pytest.fixture
    def runner(self, resource: SandboxProcess, tmp_path: Path) -> TargetTestRunner:
        config = {
            **BASE_CONFIG,
            "api_key": resource.api_key,
            "rest_endpoint": resource.url,
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        }
        return TargetTestRunner(TargetBraze, config=config, suite_config=SuiteConfig())
