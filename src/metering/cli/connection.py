"""How the client commands reach a running service: target, TLS, token, and
how a refusal is told to a person (or, with --json, to a script)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from metering.client import Connection, MeteringError


def connection_arguments(parser: argparse.ArgumentParser, *, target: bool = True) -> None:
    env = os.environ.get
    if target:
        parser.add_argument(
            "--target",
            default=env("METERING_TARGET", "127.0.0.1:50051"),
            help="host:port of the service (default: METERING_TARGET or 127.0.0.1:50051)",
        )
    parser.add_argument("--token", default=env("METERING_TOKEN"), help="bearer token (default: METERING_TOKEN)")
    parser.add_argument(
        "--tls-ca",
        default=env("METERING_CLIENT_TLS_CA"),
        help="PEM CA that signed the server's certificate; turns TLS on (default: METERING_CLIENT_TLS_CA)",
    )
    parser.add_argument("--tls-cert", default=env("METERING_CLIENT_TLS_CERT"), help="PEM client certificate for mTLS")
    parser.add_argument("--tls-key", default=env("METERING_CLIENT_TLS_KEY"), help="PEM key of --tls-cert")
    parser.add_argument(
        "--tls-server-name", default=env("METERING_CLIENT_TLS_SERVER_NAME"), help="name the server certificate names"
    )


def connection(args: argparse.Namespace, target: str | None = None) -> Connection:
    """The client library's connection from the connection arguments: plaintext unless a CA is given."""

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return Connection(
        target=target or args.target,
        token=args.token or None,
        tls_ca=path(args.tls_ca),
        tls_cert=path(args.tls_cert),
        tls_key=path(args.tls_key),
        tls_server_name=args.tls_server_name or None,
    )


def error_as_dict(error: MeteringError) -> dict[str, Any]:
    details = {
        name: json_format.MessageToDict(message, preserving_proto_field_name=True)
        for name, message in error.details.messages.items()
    }
    return {"code": error.code.name, "message": error.message, "details": details}


def print_error(error: MeteringError, *, as_json: bool = False) -> None:
    """A refusal in plain words on stderr: the status, its message, then each
    detail as a readable line (or the whole status as JSON on stdout)."""
    described = error_as_dict(error)
    if as_json:
        print(json.dumps({"error": described}, indent=2))
        return
    print(f"{described['code']}: {described['message']}", file=sys.stderr)
    for line in _detail_lines(described["details"]):
        print(f"  {line}", file=sys.stderr)


def _detail_lines(details: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    info = details.get("ErrorInfo")
    if info:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(info.get("metadata", {}).items()))
        lines.append(f"reason: {info.get('reason', '')}" + (f" ({extra})" if extra else ""))
    for violation in details.get("BadRequest", {}).get("field_violations", []):
        lines.append(f"field {violation.get('field', '')}: {violation.get('description', '')}")
    for violation in details.get("QuotaFailure", {}).get("violations", []):
        lines.append(f"quota {violation.get('subject', '')}: {violation.get('description', '')}")
    for violation in details.get("PreconditionFailure", {}).get("violations", []):
        lines.append(f"precondition {violation.get('type', '')} on {violation.get('subject', '')}")
    resource = details.get("ResourceInfo")
    if resource:
        lines.append(f"resource: {resource.get('resource_type', '')} {resource.get('resource_name', '')!r}")
    retry = details.get("RetryInfo")
    if retry:
        lines.append(f"retry after {retry.get('retry_delay', '?')} with the same ids")
    return lines
