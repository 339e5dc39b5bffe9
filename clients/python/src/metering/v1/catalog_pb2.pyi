import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import billing_pb2 as _billing_pb2
from metering.v1 import usage_pb2 as _usage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PackageRounding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACKAGE_ROUNDING_UNSPECIFIED: _ClassVar[PackageRounding]
    PACKAGE_ROUNDING_UP: _ClassVar[PackageRounding]
    PACKAGE_ROUNDING_DOWN: _ClassVar[PackageRounding]
PACKAGE_ROUNDING_UNSPECIFIED: PackageRounding
PACKAGE_ROUNDING_UP: PackageRounding
PACKAGE_ROUNDING_DOWN: PackageRounding

class CatalogMeter(_message.Message):
    __slots__ = ("slug", "aggregation", "unit", "description", "unique_property", "default_price_slug", "no_charge_price_slug", "dimensions")
    SLUG_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_PROPERTY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    NO_CHARGE_PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    slug: str
    aggregation: _usage_pb2.Aggregation
    unit: str
    description: str
    unique_property: str
    default_price_slug: str
    no_charge_price_slug: str
    dimensions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, slug: _Optional[str] = ..., aggregation: _Optional[_Union[_usage_pb2.Aggregation, str]] = ..., unit: _Optional[str] = ..., description: _Optional[str] = ..., unique_property: _Optional[str] = ..., default_price_slug: _Optional[str] = ..., no_charge_price_slug: _Optional[str] = ..., dimensions: _Optional[_Iterable[str]] = ...) -> None: ...

class CatalogPriceTier(_message.Message):
    __slots__ = ("up_to_quantity", "unit_amount", "flat_amount")
    UP_TO_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FLAT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    up_to_quantity: str
    unit_amount: str
    flat_amount: str
    def __init__(self, up_to_quantity: _Optional[str] = ..., unit_amount: _Optional[str] = ..., flat_amount: _Optional[str] = ...) -> None: ...

class CatalogPrice(_message.Message):
    __slots__ = ("slug", "meter_slug", "pricing_model", "currency_code", "unit_amount", "package_size", "package_rounding", "tiers", "no_charge")
    SLUG_FIELD_NUMBER: _ClassVar[int]
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICING_MODEL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_ROUNDING_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    NO_CHARGE_FIELD_NUMBER: _ClassVar[int]
    slug: str
    meter_slug: str
    pricing_model: _billing_pb2.PricingModel
    currency_code: str
    unit_amount: str
    package_size: str
    package_rounding: PackageRounding
    tiers: _containers.RepeatedCompositeFieldContainer[CatalogPriceTier]
    no_charge: bool
    def __init__(self, slug: _Optional[str] = ..., meter_slug: _Optional[str] = ..., pricing_model: _Optional[_Union[_billing_pb2.PricingModel, str]] = ..., currency_code: _Optional[str] = ..., unit_amount: _Optional[str] = ..., package_size: _Optional[str] = ..., package_rounding: _Optional[_Union[PackageRounding, str]] = ..., tiers: _Optional[_Iterable[_Union[CatalogPriceTier, _Mapping]]] = ..., no_charge: _Optional[bool] = ...) -> None: ...

class CatalogPlanMeter(_message.Message):
    __slots__ = ("meter_slug", "price_slug", "limit", "included_quantity", "reset_period", "limit_enforcement", "approaching_threshold_percent")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    RESET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    APPROACHING_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    price_slug: str
    limit: str
    included_quantity: str
    reset_period: _usage_pb2.ResetPeriod
    limit_enforcement: _usage_pb2.LimitEnforcement
    approaching_threshold_percent: str
    def __init__(self, meter_slug: _Optional[str] = ..., price_slug: _Optional[str] = ..., limit: _Optional[str] = ..., included_quantity: _Optional[str] = ..., reset_period: _Optional[_Union[_usage_pb2.ResetPeriod, str]] = ..., limit_enforcement: _Optional[_Union[_usage_pb2.LimitEnforcement, str]] = ..., approaching_threshold_percent: _Optional[str] = ...) -> None: ...

class CatalogPlan(_message.Message):
    __slots__ = ("slug", "name", "currency_code", "meters", "prepaid", "credits_low_threshold")
    SLUG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    METERS_FIELD_NUMBER: _ClassVar[int]
    PREPAID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_LOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    slug: str
    name: str
    currency_code: str
    meters: _containers.RepeatedCompositeFieldContainer[CatalogPlanMeter]
    prepaid: bool
    credits_low_threshold: str
    def __init__(self, slug: _Optional[str] = ..., name: _Optional[str] = ..., currency_code: _Optional[str] = ..., meters: _Optional[_Iterable[_Union[CatalogPlanMeter, _Mapping]]] = ..., prepaid: _Optional[bool] = ..., credits_low_threshold: _Optional[str] = ...) -> None: ...

class GetCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCatalogResponse(_message.Message):
    __slots__ = ("meters", "prices", "plans", "revision", "load_time")
    METERS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    PLANS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_FIELD_NUMBER: _ClassVar[int]
    meters: _containers.RepeatedCompositeFieldContainer[CatalogMeter]
    prices: _containers.RepeatedCompositeFieldContainer[CatalogPrice]
    plans: _containers.RepeatedCompositeFieldContainer[CatalogPlan]
    revision: str
    load_time: _timestamp_pb2.Timestamp
    def __init__(self, meters: _Optional[_Iterable[_Union[CatalogMeter, _Mapping]]] = ..., prices: _Optional[_Iterable[_Union[CatalogPrice, _Mapping]]] = ..., plans: _Optional[_Iterable[_Union[CatalogPlan, _Mapping]]] = ..., revision: _Optional[str] = ..., load_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
