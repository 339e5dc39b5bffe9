import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import billing_pb2 as _billing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WalletGrant(_message.Message):
    __slots__ = ("grant_id", "customer_id", "amount", "remaining", "category", "priority", "effective_time", "expire_time", "meter_slugs", "active", "reason", "create_time")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    METER_SLUGS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    customer_id: str
    amount: _billing_pb2.Money
    remaining: _billing_pb2.Money
    category: _billing_pb2.CreditCategory
    priority: int
    effective_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    meter_slugs: _containers.RepeatedScalarFieldContainer[str]
    active: bool
    reason: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, grant_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., amount: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., remaining: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., category: _Optional[_Union[_billing_pb2.CreditCategory, str]] = ..., priority: _Optional[int] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., meter_slugs: _Optional[_Iterable[str]] = ..., active: _Optional[bool] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WalletSummary(_message.Message):
    __slots__ = ("available", "grants", "prepaid", "low_threshold")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    PREPAID_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    available: _billing_pb2.Money
    grants: _containers.RepeatedCompositeFieldContainer[WalletGrant]
    prepaid: bool
    low_threshold: _billing_pb2.Money
    def __init__(self, available: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., grants: _Optional[_Iterable[_Union[WalletGrant, _Mapping]]] = ..., prepaid: _Optional[bool] = ..., low_threshold: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ...) -> None: ...

class GrantWalletCreditRequest(_message.Message):
    __slots__ = ("customer_id", "grant_id", "amount", "category", "priority", "effective_time", "expire_time", "meter_slugs", "reason")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    METER_SLUGS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    grant_id: str
    amount: _billing_pb2.Money
    category: _billing_pb2.CreditCategory
    priority: int
    effective_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    meter_slugs: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, customer_id: _Optional[str] = ..., grant_id: _Optional[str] = ..., amount: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., category: _Optional[_Union[_billing_pb2.CreditCategory, str]] = ..., priority: _Optional[int] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., meter_slugs: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class GrantWalletCreditResponse(_message.Message):
    __slots__ = ("grant", "duplicate", "wallet")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    WALLET_FIELD_NUMBER: _ClassVar[int]
    grant: WalletGrant
    duplicate: bool
    wallet: WalletSummary
    def __init__(self, grant: _Optional[_Union[WalletGrant, _Mapping]] = ..., duplicate: _Optional[bool] = ..., wallet: _Optional[_Union[WalletSummary, _Mapping]] = ...) -> None: ...

class GetWalletRequest(_message.Message):
    __slots__ = ("customer_id", "include_inactive")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    include_inactive: bool
    def __init__(self, customer_id: _Optional[str] = ..., include_inactive: _Optional[bool] = ...) -> None: ...

class GetWalletResponse(_message.Message):
    __slots__ = ("customer_id", "wallet", "as_of_time")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    WALLET_FIELD_NUMBER: _ClassVar[int]
    AS_OF_TIME_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    wallet: WalletSummary
    as_of_time: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., wallet: _Optional[_Union[WalletSummary, _Mapping]] = ..., as_of_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreditsLow(_message.Message):
    __slots__ = ("available", "threshold", "transaction_id")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    available: _billing_pb2.Money
    threshold: _billing_pb2.Money
    transaction_id: str
    def __init__(self, available: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., threshold: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class CreditsExhausted(_message.Message):
    __slots__ = ("available", "requested", "transaction_id", "meter_slug", "refused")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    available: _billing_pb2.Money
    requested: _billing_pb2.Money
    transaction_id: str
    meter_slug: str
    refused: bool
    def __init__(self, available: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., requested: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., transaction_id: _Optional[str] = ..., meter_slug: _Optional[str] = ..., refused: _Optional[bool] = ...) -> None: ...
