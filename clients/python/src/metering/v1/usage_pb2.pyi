import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import wallets_pb2 as _wallets_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_SUM: _ClassVar[Aggregation]
    AGGREGATION_COUNT: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_UNIQUE_COUNT: _ClassVar[Aggregation]
    AGGREGATION_LATEST: _ClassVar[Aggregation]

class ResetPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESET_PERIOD_UNSPECIFIED: _ClassVar[ResetPeriod]
    RESET_PERIOD_DAY: _ClassVar[ResetPeriod]
    RESET_PERIOD_WEEK: _ClassVar[ResetPeriod]
    RESET_PERIOD_MONTH: _ClassVar[ResetPeriod]
    RESET_PERIOD_NONE: _ClassVar[ResetPeriod]

class LimitEnforcement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LIMIT_ENFORCEMENT_UNSPECIFIED: _ClassVar[LimitEnforcement]
    LIMIT_ENFORCEMENT_HARD: _ClassVar[LimitEnforcement]
    LIMIT_ENFORCEMENT_SOFT: _ClassVar[LimitEnforcement]
    LIMIT_ENFORCEMENT_UNLIMITED: _ClassVar[LimitEnforcement]

class EnforcementMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENFORCEMENT_MODE_UNSPECIFIED: _ClassVar[EnforcementMode]
    ENFORCEMENT_MODE_ENFORCE_LIMIT: _ClassVar[EnforcementMode]
    ENFORCEMENT_MODE_ALLOW_OVERAGE: _ClassVar[EnforcementMode]

class WindowSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_SIZE_UNSPECIFIED: _ClassVar[WindowSize]
    WINDOW_SIZE_HOUR: _ClassVar[WindowSize]
    WINDOW_SIZE_DAY: _ClassVar[WindowSize]
    WINDOW_SIZE_MONTH: _ClassVar[WindowSize]
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_SUM: Aggregation
AGGREGATION_COUNT: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_UNIQUE_COUNT: Aggregation
AGGREGATION_LATEST: Aggregation
RESET_PERIOD_UNSPECIFIED: ResetPeriod
RESET_PERIOD_DAY: ResetPeriod
RESET_PERIOD_WEEK: ResetPeriod
RESET_PERIOD_MONTH: ResetPeriod
RESET_PERIOD_NONE: ResetPeriod
LIMIT_ENFORCEMENT_UNSPECIFIED: LimitEnforcement
LIMIT_ENFORCEMENT_HARD: LimitEnforcement
LIMIT_ENFORCEMENT_SOFT: LimitEnforcement
LIMIT_ENFORCEMENT_UNLIMITED: LimitEnforcement
ENFORCEMENT_MODE_UNSPECIFIED: EnforcementMode
ENFORCEMENT_MODE_ENFORCE_LIMIT: EnforcementMode
ENFORCEMENT_MODE_ALLOW_OVERAGE: EnforcementMode
WINDOW_SIZE_UNSPECIFIED: WindowSize
WINDOW_SIZE_HOUR: WindowSize
WINDOW_SIZE_DAY: WindowSize
WINDOW_SIZE_MONTH: WindowSize

class RecordUsageRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slug", "price_slug", "quantity", "transaction_id", "event_time", "properties", "enforcement_mode")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_MODE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slug: str
    price_slug: str
    quantity: str
    transaction_id: str
    event_time: _timestamp_pb2.Timestamp
    properties: _containers.ScalarMap[str, str]
    enforcement_mode: EnforcementMode
    def __init__(self, customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., price_slug: _Optional[str] = ..., quantity: _Optional[str] = ..., transaction_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ..., enforcement_mode: _Optional[_Union[EnforcementMode, str]] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("event", "duplicate", "balance", "overage_quantity")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    event: UsageEvent
    duplicate: bool
    balance: Balance
    overage_quantity: str
    def __init__(self, event: _Optional[_Union[UsageEvent, _Mapping]] = ..., duplicate: _Optional[bool] = ..., balance: _Optional[_Union[Balance, _Mapping]] = ..., overage_quantity: _Optional[str] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("event_id", "customer_id", "transaction_id", "meter_slug", "price_slug", "quantity", "event_time", "recorded_time", "properties", "void_time", "void_reason")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDED_TIME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    VOID_TIME_FIELD_NUMBER: _ClassVar[int]
    VOID_REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    customer_id: str
    transaction_id: str
    meter_slug: str
    price_slug: str
    quantity: str
    event_time: _timestamp_pb2.Timestamp
    recorded_time: _timestamp_pb2.Timestamp
    properties: _containers.ScalarMap[str, str]
    void_time: _timestamp_pb2.Timestamp
    void_reason: str
    def __init__(self, event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., transaction_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., price_slug: _Optional[str] = ..., quantity: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties: _Optional[_Mapping[str, str]] = ..., void_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., void_reason: _Optional[str] = ...) -> None: ...

class CheckBalanceRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slug", "requested_quantity")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slug: str
    requested_quantity: str
    def __init__(self, customer_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., requested_quantity: _Optional[str] = ...) -> None: ...

class CheckBalanceResponse(_message.Message):
    __slots__ = ("customer_id", "plan_slug", "balances", "requested_allowed", "as_of_time", "wallet")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_FIELD_NUMBER: _ClassVar[int]
    WALLET_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    plan_slug: str
    balances: _containers.RepeatedCompositeFieldContainer[Balance]
    requested_allowed: bool
    as_of_time: _timestamp_pb2.Timestamp
    wallet: _wallets_pb2.WalletSummary
    def __init__(self, customer_id: _Optional[str] = ..., plan_slug: _Optional[str] = ..., balances: _Optional[_Iterable[_Union[Balance, _Mapping]]] = ..., requested_allowed: _Optional[bool] = ..., as_of_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wallet: _Optional[_Union[_wallets_pb2.WalletSummary, _Mapping]] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("meter_slug", "aggregation", "unit", "used", "limit", "granted", "reserved", "available", "percent_used", "approaching_threshold_percent", "approaching_limit", "limit_reached", "included_quantity", "period_start_time", "period_end_time", "reset_period", "limit_enforcement", "price_slug")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_USED_FIELD_NUMBER: _ClassVar[int]
    APPROACHING_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    APPROACHING_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_REACHED_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    aggregation: Aggregation
    unit: str
    used: str
    limit: str
    granted: str
    reserved: str
    available: str
    percent_used: str
    approaching_threshold_percent: str
    approaching_limit: bool
    limit_reached: bool
    included_quantity: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    reset_period: ResetPeriod
    limit_enforcement: LimitEnforcement
    price_slug: str
    def __init__(self, meter_slug: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., unit: _Optional[str] = ..., used: _Optional[str] = ..., limit: _Optional[str] = ..., granted: _Optional[str] = ..., reserved: _Optional[str] = ..., available: _Optional[str] = ..., percent_used: _Optional[str] = ..., approaching_threshold_percent: _Optional[str] = ..., approaching_limit: _Optional[bool] = ..., limit_reached: _Optional[bool] = ..., included_quantity: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reset_period: _Optional[_Union[ResetPeriod, str]] = ..., limit_enforcement: _Optional[_Union[LimitEnforcement, str]] = ..., price_slug: _Optional[str] = ...) -> None: ...

class PropertyFilter(_message.Message):
    __slots__ = ("key", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("customer_id", "meter_slugs", "start_time", "end_time", "window_size", "time_zone", "group_by", "filters", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUGS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    meter_slugs: _containers.RepeatedScalarFieldContainer[str]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    window_size: WindowSize
    time_zone: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[PropertyFilter]
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., meter_slugs: _Optional[_Iterable[str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_size: _Optional[_Union[WindowSize, str]] = ..., time_zone: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[PropertyFilter, _Mapping]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    next_page_token: str
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("meter_slug", "window_start_time", "window_end_time", "value", "event_count", "group_values")
    class GroupValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_TIME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    GROUP_VALUES_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    window_start_time: _timestamp_pb2.Timestamp
    window_end_time: _timestamp_pb2.Timestamp
    value: str
    event_count: int
    group_values: _containers.ScalarMap[str, str]
    def __init__(self, meter_slug: _Optional[str] = ..., window_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[str] = ..., event_count: _Optional[int] = ..., group_values: _Optional[_Mapping[str, str]] = ...) -> None: ...
