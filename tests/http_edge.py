"""Test helpers for the HTTP edge: raw Connect and gRPC-Web calls with httpx, and their refusals."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from metering.api.errors import status_details

SERVICE_PATH = "/metering.v1.MeteringService"
JSON = {"content-type": "application/json"}


def call(
    client: httpx.Client, base: str, method: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """One Connect unary call with a JSON body."""
    return client.post(f"{base}{SERVICE_PATH}/{method}", json=dict(body), headers={**JSON, **(headers or {})})


def ok(response: httpx.Response) -> dict[str, Any]:
    """The JSON answer of a call that must have succeeded."""
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer, dict)
    return answer


def details(response: httpx.Response) -> dict[str, Message]:
    """The google.rpc details of a Connect refusal's JSON body, by type name."""
    status = status_pb2.Status()
    for detail in response.json().get("details", []):
        value = base64.b64decode(detail["value"] + "=" * (-len(detail["value"]) % 4))
        status.details.add(type_url=f"type.googleapis.com/{detail['type']}", value=value)
    return status_details(status)


def refusal_info(response: httpx.Response) -> error_details_pb2.ErrorInfo:
    info = details(response).get("ErrorInfo")
    assert isinstance(info, error_details_pb2.ErrorInfo), response.text
    return info


def envelope(message: bytes | Message, flags: int = 0) -> bytes:
    """One message in the Connect streaming / gRPC-Web framing (flags, length, bytes)."""
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return struct.pack(">BI", flags, len(data)) + data


def envelopes(body: bytes) -> Iterator[tuple[int, bytes]]:
    """The (flags, payload) frames of a streamed body."""
    offset = 0
    while offset < len(body):
        flags, size = struct.unpack_from(">BI", body, offset)
        yield flags, body[offset + 5 : offset + 5 + size]
        offset += 5 + size


def grpc_web_trailers(payload: bytes) -> dict[str, str]:
    """The trailer frame of a gRPC-Web answer, as a dict."""
    lines = payload.decode().strip().split("\r\n")
    return {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}


def grpc_web_status(trailers: Mapping[str, str]) -> status_pb2.Status:
    raw = trailers["grpc-status-details-bin"]
    return status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))


def end_of_stream(payload: bytes) -> dict[str, Any]:
    """The end-of-stream message of a Connect stream (flags 0x02)."""
    end = json.loads(payload)
    assert isinstance(end, dict)
    return end
