"""Event ids: new_event_ids builds UUIDs without UUID.__init__, and
event_id_text formats them without UUID.__str__; both must give exactly
what the standard library would."""

from __future__ import annotations

import copy
import time
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from metering.domain.records import event_id_text, new_event_id, new_event_ids


def test_new_event_ids_are_the_uuids_uuid_int_builds() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_event_ids(500)
    after = time.time_ns() // 1_000_000
    assert len(ids) == len(set(ids)) == 500
    for event_id in ids:
        same = UUID(int=event_id.int)
        assert type(event_id) is UUID
        assert event_id == same and hash(event_id) == hash(same) and str(event_id) == str(same)
        assert event_id.is_safe == same.is_safe
        assert event_id.version == 7
        assert event_id.variant == "specified in RFC 4122"
        assert before <= event_id.int >> 80 <= after  # milliseconds since the epoch
        assert UUID(str(event_id)) == event_id
        assert copy.deepcopy(event_id) == event_id


def test_new_event_id_and_an_empty_batch() -> None:
    assert new_event_ids(0) == []
    assert new_event_id().version == 7


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_event_id_text_is_str(value: int) -> None:
    event_id = UUID(int=value)
    assert event_id_text(event_id) == str(event_id)
