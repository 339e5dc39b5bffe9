import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Grant(_message.Message):
    __slots__ = ("grant_id", "customer_id", "meter_slug", "quantity", "remaining_quantity", "effective_time", "expire_time", "active", "reason", "create_time")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    customer_id: str
    meter_slug: str
    quantity: str
    remaining_quantity: str
    effective_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    active: bool
    reason: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, grant_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., quantity: _Optional[str] = ..., remaining_quantity: _Optional[str] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active: _Optional[bool] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GrantCreditsRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slug", "quantity", "grant_id", "effective_time", "expire_time", "expire_at_period_end", "reason")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_AT_PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slug: str
    quantity: str
    grant_id: str
    effective_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    expire_at_period_end: bool
    reason: str
    def __init__(self, customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., quantity: _Optional[str] = ..., grant_id: _Optional[str] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_at_period_end: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class GrantCreditsResponse(_message.Message):
    __slots__ = ("grant", "duplicate")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    duplicate: bool
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slug", "include_expired")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slug: str
    include_expired: bool
    def __init__(self, customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., include_expired: _Optional[bool] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...
