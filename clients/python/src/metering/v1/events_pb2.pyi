import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import usage_pb2 as _usage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListUsageEventsRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slug", "start_time", "end_time", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slug: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsageEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_usage_pb2.UsageEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[_usage_pb2.UsageEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VoidUsageRequest(_message.Message):
    __slots__ = ("customer_id", "transaction_id", "reason")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    transaction_id: str
    reason: str
    def __init__(self, customer_id: _Optional[str] = ..., transaction_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class VoidUsageResponse(_message.Message):
    __slots__ = ("event", "duplicate", "balance")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    event: _usage_pb2.UsageEvent
    duplicate: bool
    balance: _usage_pb2.Balance
    def __init__(self, event: _Optional[_Union[_usage_pb2.UsageEvent, _Mapping]] = ..., duplicate: _Optional[bool] = ..., balance: _Optional[_Union[_usage_pb2.Balance, _Mapping]] = ...) -> None: ...
