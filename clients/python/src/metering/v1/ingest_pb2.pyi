from google.rpc import status_pb2 as _status_pb2
from metering.v1 import usage_pb2 as _usage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordUsageBatchRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_usage_pb2.RecordUsageRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[_usage_pb2.RecordUsageRequest, _Mapping]]] = ...) -> None: ...

class RecordUsageBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordUsageResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RecordUsageResult, _Mapping]]] = ...) -> None: ...

class RecordUsageResult(_message.Message):
    __slots__ = ("index", "status", "response")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    index: int
    status: _status_pb2.Status
    response: _usage_pb2.RecordUsageResponse
    def __init__(self, index: _Optional[int] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., response: _Optional[_Union[_usage_pb2.RecordUsageResponse, _Mapping]] = ...) -> None: ...

class RecordUsageStreamRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_usage_pb2.RecordUsageRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[_usage_pb2.RecordUsageRequest, _Mapping]]] = ...) -> None: ...

class RecordUsageStreamResponse(_message.Message):
    __slots__ = ("recorded_count", "duplicate_count", "failed_count", "failures")
    RECORDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    recorded_count: int
    duplicate_count: int
    failed_count: int
    failures: _containers.RepeatedCompositeFieldContainer[RecordUsageResult]
    def __init__(self, recorded_count: _Optional[int] = ..., duplicate_count: _Optional[int] = ..., failed_count: _Optional[int] = ..., failures: _Optional[_Iterable[_Union[RecordUsageResult, _Mapping]]] = ...) -> None: ...
