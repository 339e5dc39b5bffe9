import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PricingModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRICING_MODEL_UNSPECIFIED: _ClassVar[PricingModel]
    PRICING_MODEL_PER_UNIT: _ClassVar[PricingModel]
    PRICING_MODEL_PACKAGE: _ClassVar[PricingModel]
    PRICING_MODEL_GRADUATED: _ClassVar[PricingModel]
    PRICING_MODEL_VOLUME: _ClassVar[PricingModel]

class InvoiceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOICE_STATUS_UNSPECIFIED: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_GATHERING: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_DRAFT: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_FINALIZED: _ClassVar[InvoiceStatus]

class CreditCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDIT_CATEGORY_UNSPECIFIED: _ClassVar[CreditCategory]
    CREDIT_CATEGORY_PAID: _ClassVar[CreditCategory]
    CREDIT_CATEGORY_PROMOTIONAL: _ClassVar[CreditCategory]
PRICING_MODEL_UNSPECIFIED: PricingModel
PRICING_MODEL_PER_UNIT: PricingModel
PRICING_MODEL_PACKAGE: PricingModel
PRICING_MODEL_GRADUATED: PricingModel
PRICING_MODEL_VOLUME: PricingModel
INVOICE_STATUS_UNSPECIFIED: InvoiceStatus
INVOICE_STATUS_GATHERING: InvoiceStatus
INVOICE_STATUS_DRAFT: InvoiceStatus
INVOICE_STATUS_FINALIZED: InvoiceStatus
CREDIT_CATEGORY_UNSPECIFIED: CreditCategory
CREDIT_CATEGORY_PAID: CreditCategory
CREDIT_CATEGORY_PROMOTIONAL: CreditCategory

class Money(_message.Message):
    __slots__ = ("currency_code", "amount")
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    currency_code: str
    amount: str
    def __init__(self, currency_code: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class EstimateBillRequest(_message.Message):
    __slots__ = ("customer_id", "period_time", "what_if_plan_slug")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_TIME_FIELD_NUMBER: _ClassVar[int]
    WHAT_IF_PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    period_time: _timestamp_pb2.Timestamp
    what_if_plan_slug: str
    def __init__(self, customer_id: _Optional[str] = ..., period_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., what_if_plan_slug: _Optional[str] = ...) -> None: ...

class EstimateBillResponse(_message.Message):
    __slots__ = ("customer_id", "plan_slug", "period_start_time", "period_end_time", "lines", "subtotal", "credits", "total", "invoice_status", "invoice_id", "invoice_number", "finalize_time", "what_if", "credits_applied")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    INVOICE_STATUS_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_TIME_FIELD_NUMBER: _ClassVar[int]
    WHAT_IF_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    plan_slug: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    lines: _containers.RepeatedCompositeFieldContainer[BillLine]
    subtotal: Money
    credits: Money
    total: Money
    invoice_status: InvoiceStatus
    invoice_id: str
    invoice_number: int
    finalize_time: _timestamp_pb2.Timestamp
    what_if: WhatIfBill
    credits_applied: _containers.RepeatedCompositeFieldContainer[CreditApplied]
    def __init__(self, customer_id: _Optional[str] = ..., plan_slug: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[BillLine, _Mapping]]] = ..., subtotal: _Optional[_Union[Money, _Mapping]] = ..., credits: _Optional[_Union[Money, _Mapping]] = ..., total: _Optional[_Union[Money, _Mapping]] = ..., invoice_status: _Optional[_Union[InvoiceStatus, str]] = ..., invoice_id: _Optional[str] = ..., invoice_number: _Optional[int] = ..., finalize_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., what_if: _Optional[_Union[WhatIfBill, _Mapping]] = ..., credits_applied: _Optional[_Iterable[_Union[CreditApplied, _Mapping]]] = ...) -> None: ...

class WhatIfBill(_message.Message):
    __slots__ = ("plan_slug", "lines", "subtotal", "credits", "total", "unlisted_meter_slugs")
    PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNLISTED_METER_SLUGS_FIELD_NUMBER: _ClassVar[int]
    plan_slug: str
    lines: _containers.RepeatedCompositeFieldContainer[BillLine]
    subtotal: Money
    credits: Money
    total: Money
    unlisted_meter_slugs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, plan_slug: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[BillLine, _Mapping]]] = ..., subtotal: _Optional[_Union[Money, _Mapping]] = ..., credits: _Optional[_Union[Money, _Mapping]] = ..., total: _Optional[_Union[Money, _Mapping]] = ..., unlisted_meter_slugs: _Optional[_Iterable[str]] = ...) -> None: ...

class BillLine(_message.Message):
    __slots__ = ("meter_slug", "price_slug", "pricing_model", "quantity", "included_quantity", "billable_quantity", "unit_amount", "package_size", "tiers", "amount")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICING_MODEL_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    BILLABLE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    price_slug: str
    pricing_model: PricingModel
    quantity: str
    included_quantity: str
    billable_quantity: str
    unit_amount: str
    package_size: str
    tiers: _containers.RepeatedCompositeFieldContainer[BillTier]
    amount: Money
    def __init__(self, meter_slug: _Optional[str] = ..., price_slug: _Optional[str] = ..., pricing_model: _Optional[_Union[PricingModel, str]] = ..., quantity: _Optional[str] = ..., included_quantity: _Optional[str] = ..., billable_quantity: _Optional[str] = ..., unit_amount: _Optional[str] = ..., package_size: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[BillTier, _Mapping]]] = ..., amount: _Optional[_Union[Money, _Mapping]] = ...) -> None: ...

class BillTier(_message.Message):
    __slots__ = ("from_quantity", "up_to_quantity", "quantity", "unit_amount", "flat_amount", "amount")
    FROM_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UP_TO_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FLAT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    from_quantity: str
    up_to_quantity: str
    quantity: str
    unit_amount: str
    flat_amount: str
    amount: str
    def __init__(self, from_quantity: _Optional[str] = ..., up_to_quantity: _Optional[str] = ..., quantity: _Optional[str] = ..., unit_amount: _Optional[str] = ..., flat_amount: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class CreditApplied(_message.Message):
    __slots__ = ("grant_id", "category", "amount")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    category: CreditCategory
    amount: Money
    def __init__(self, grant_id: _Optional[str] = ..., category: _Optional[_Union[CreditCategory, str]] = ..., amount: _Optional[_Union[Money, _Mapping]] = ...) -> None: ...
