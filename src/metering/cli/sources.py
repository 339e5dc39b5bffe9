"""What a line of an import file is: one RecordUsageRequest, from JSON lines or from CSV.

JSON lines: one RecordUsageRequest per line in the proto3 JSON mapping.
CSV: a header row naming the columns like the JSON fields (`customer_id`, `meter_slug` or
`price_slug`, `quantity`, `transaction_id`, `event_time`, `enforcement_mode`, and one
`properties.KEY` column per property), then one event per line; an empty cell leaves its
field unset. Both become the same message through protobuf's JSON parser, the one place
a field is read.

The format is told from the file's first line, before any event is sent: `{` starts JSON
lines; anything else is taken for CSV and must have a usable header, or the import is
refused (exit 2) with what a header looks like.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import IO, Any, Protocol

from google.protobuf import json_format

from metering.cli.exits import UsageError
from metering.v1 import usage_pb2

FORMATS = ("auto", "jsonl", "csv")
PROPERTY_PREFIX = "properties."
_DELIMITERS = (",", ";", "\t")
_FIELDS = usage_pb2.RecordUsageRequest.DESCRIPTOR.fields
# Every column a header may name: the proto field names, and their JSON (lowerCamelCase) names.
_COLUMNS = {
    **{f.name: f.name for f in _FIELDS if f.name != "properties"},
    **{f.json_name: f.name for f in _FIELDS if f.name != "properties"},
}
_EXAMPLE_HEADER = "customer_id,meter_slug,quantity,transaction_id,event_time,properties.model"
_COLUMNS_HELP = (
    "customer_id, meter_slug or price_slug, quantity, transaction_id, event_time, enforcement_mode, "
    "and properties.KEY for each property"
)


class LineRefused(Exception):
    """This line is no RecordUsageRequest: it is rejected (with its line number) and the import goes on."""


class LineFormat(Protocol):
    def request(self, raw: bytes) -> usage_pb2.RecordUsageRequest: ...


@dataclass(frozen=True, slots=True)
class Head:
    """A file's first non-blank line (a CSV header, or the first JSON line) and where it ends."""

    line: bytes
    end_offset: int  # bytes up to and including it
    line_number: int  # 1-based; 0 for a file of blank lines


def read_head(file: IO[bytes]) -> Head:
    offset = 0
    for number, raw in enumerate(file, start=1):
        offset += len(raw)
        if raw.strip():
            return Head(raw, offset, number)
    return Head(b"", offset, 0)


class JsonLines:
    def request(self, raw: bytes) -> usage_pb2.RecordUsageRequest:
        try:
            return json_format.Parse(raw, usage_pb2.RecordUsageRequest())
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise LineRefused(f"not a RecordUsageRequest: {exc}") from None


@dataclass(frozen=True, slots=True)
class CsvRows:
    columns: tuple[str, ...]  # proto field names, or "properties.KEY"
    delimiter: str

    def request(self, raw: bytes) -> usage_pb2.RecordUsageRequest:
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise LineRefused(f"not UTF-8: {exc}") from None
        cells = next(csv.reader([text], delimiter=self.delimiter), [])
        if len(cells) != len(self.columns):
            raise LineRefused(f"{len(cells)} cells where the header names {len(self.columns)} columns")
        fields: dict[str, Any] = {}
        properties: dict[str, str] = {}
        for column, cell in zip(self.columns, cells, strict=True):
            if cell == "":
                continue
            if column.startswith(PROPERTY_PREFIX):
                properties[column.removeprefix(PROPERTY_PREFIX)] = cell
            else:
                fields[column] = cell
        if properties:
            fields["properties"] = properties
        try:
            return json_format.ParseDict(fields, usage_pb2.RecordUsageRequest())
        except json_format.ParseError as exc:
            raise LineRefused(f"not a RecordUsageRequest: {exc}") from None


def detect(first_line: bytes, *, file_name: str, forced: str = "auto") -> LineFormat:
    """The format of a file from its first non-blank line (or as --format says); a file
    that is neither JSON lines nor CSV with a usable header is refused (UsageError)."""
    head = first_line.lstrip()
    if forced == "jsonl" or (forced == "auto" and (not head or head.startswith(b"{"))):
        return JsonLines()
    if forced == "auto" and head.startswith(b"["):
        raise UsageError(
            f"metering import: {file_name} is a JSON array; give JSON lines (one RecordUsageRequest object "
            "per line) or CSV with a header"
        )
    return csv_header(first_line, file_name=file_name)


def csv_header(line: bytes, *, file_name: str) -> CsvRows:
    """The columns a CSV header names, checked before any event is sent."""
    refused = f"metering import: {file_name} looks like CSV"
    try:
        text = line.decode("utf-8-sig").strip("\r\n")
    except UnicodeDecodeError:
        raise UsageError(f"{refused}, but its first line is not UTF-8 text") from None
    delimiter = max(_DELIMITERS, key=text.count)  # the most frequent; a tie goes to the comma
    names = [name.strip() for name in next(csv.reader([text], delimiter=delimiter), [])]
    columns = tuple(_column(name) for name in names)
    if not any(columns):
        raise UsageError(
            f"{refused}, but its first line is not a header naming the columns: {text[:80]!r}. "
            f"Add one such as\n  {_EXAMPLE_HEADER}\n(columns: {_COLUMNS_HELP}), or give JSON lines "
            "(one RecordUsageRequest per line)"
        )
    unknown = [name for name, column in zip(names, columns, strict=True) if column is None]
    if unknown:
        raise UsageError(f"{refused}, but its header names unknown columns: {', '.join(unknown)} ({_COLUMNS_HELP})")
    known = [column for column in columns if column is not None]
    repeated = sorted({column for column in known if known.count(column) > 1})
    if repeated:
        raise UsageError(f"{refused}, but its header names a column twice: {', '.join(repeated)}")
    missing = [name for name in ("customer_id", "transaction_id") if name not in known]
    if "meter_slug" not in known and "price_slug" not in known:
        missing.append("meter_slug or price_slug")
    if missing:
        raise UsageError(f"{refused}, but its header lacks {', '.join(missing)} (header: {text[:80]!r})")
    return CsvRows(columns=tuple(known), delimiter=delimiter)


def _column(name: str) -> str | None:
    if name.startswith(PROPERTY_PREFIX) and len(name) > len(PROPERTY_PREFIX):
        return name
    return _COLUMNS.get(name)
