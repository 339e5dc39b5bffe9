import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import usage_pb2 as _usage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATUS_UNSPECIFIED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_HELD: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_COMMITTED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_RELEASED: _ClassVar[ReservationStatus]
    RESERVATION_STATUS_EXPIRED: _ClassVar[ReservationStatus]
RESERVATION_STATUS_UNSPECIFIED: ReservationStatus
RESERVATION_STATUS_HELD: ReservationStatus
RESERVATION_STATUS_COMMITTED: ReservationStatus
RESERVATION_STATUS_RELEASED: ReservationStatus
RESERVATION_STATUS_EXPIRED: ReservationStatus

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "customer_id", "meter_slug", "quantity", "status", "create_time", "expire_time", "committed_quantity", "event_id")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    customer_id: str
    meter_slug: str
    quantity: str
    status: ReservationStatus
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    committed_quantity: str
    event_id: str
    def __init__(self, reservation_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., quantity: _Optional[str] = ..., status: _Optional[_Union[ReservationStatus, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., committed_quantity: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class ReserveUsageRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slug", "quantity", "reservation_id", "ttl")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slug: str
    quantity: str
    reservation_id: str
    ttl: _duration_pb2.Duration
    def __init__(self, customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., quantity: _Optional[str] = ..., reservation_id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReserveUsageResponse(_message.Message):
    __slots__ = ("reservation", "duplicate", "balance")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    duplicate: bool
    balance: _usage_pb2.Balance
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ..., duplicate: _Optional[bool] = ..., balance: _Optional[_Union[_usage_pb2.Balance, _Mapping]] = ...) -> None: ...

class CommitReservationRequest(_message.Message):
    __slots__ = ("customer_id", "reservation_id", "quantity", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    reservation_id: str
    quantity: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, customer_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., quantity: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CommitReservationResponse(_message.Message):
    __slots__ = ("event", "reservation", "duplicate", "balance")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    event: _usage_pb2.UsageEvent
    reservation: Reservation
    duplicate: bool
    balance: _usage_pb2.Balance
    def __init__(self, event: _Optional[_Union[_usage_pb2.UsageEvent, _Mapping]] = ..., reservation: _Optional[_Union[Reservation, _Mapping]] = ..., duplicate: _Optional[bool] = ..., balance: _Optional[_Union[_usage_pb2.Balance, _Mapping]] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("customer_id", "reservation_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    reservation_id: str
    def __init__(self, customer_id: _Optional[str] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ("reservation", "balance")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    balance: _usage_pb2.Balance
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ..., balance: _Optional[_Union[_usage_pb2.Balance, _Mapping]] = ...) -> None: ...
