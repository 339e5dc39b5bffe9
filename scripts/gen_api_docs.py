"""Write the API reference (docs/api/reference.md) from the comments of proto/metering/v1/*.proto.

The .proto files are the contract and their comments its documentation (they
also become the docs of every generated stub), so the site's reference is
generated from them rather than written twice: it cannot drift.

protoc (grpc_tools.protoc) parses the files with --include_source_info into a
descriptor set, read back with protobuf's descriptor_pb2: the comments come
from the parser, not from a regex over the text.

The page is generated, never committed (.gitignore): `mkdocs build` runs this
first through scripts/mkdocs_hooks.py, so `make docs` and `mkdocs serve`
always show the .proto files as they are.

    python scripts/gen_api_docs.py [--output PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party" / "proto"
PACKAGE = "metering.v1"
DEFAULT_OUTPUT = ROOT / "docs" / "api" / "reference.md"
# The service first (it is what a reader looks for), then every other file in name order.
SERVICE_FILE = "metering/v1/metering_service.proto"

# Field numbers of descriptor.proto, the path elements of SourceCodeInfo.Location.
_FILE_MESSAGE = 4
_FILE_ENUM = 5
_FILE_SERVICE = 6
_MESSAGE_FIELD = 2
_MESSAGE_NESTED = 3
_MESSAGE_ENUM = 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


def descriptor_set(proto_root: Path = PROTO_ROOT) -> descriptor_pb2.FileDescriptorSet:
    """Parse every .proto of the package with protoc, comments included."""
    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "metering" / "v1").glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "metering.binpb"
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{THIRD_PARTY}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(protos)}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@dataclass(frozen=True, slots=True)
class _Comments:
    """The comments protoc attached to each element, by its path in the file's descriptor."""

    by_path: dict[tuple[int, ...], str]

    @classmethod
    def of(cls, file: descriptor_pb2.FileDescriptorProto) -> _Comments:
        found: dict[tuple[int, ...], str] = {}
        for location in file.source_code_info.location:
            parts = [_dedent(location.leading_comments), _dedent(location.trailing_comments)]
            text = "\n\n".join(part for part in parts if part)
            if text:
                found[tuple(location.path)] = text
        return cls(found)

    def get(self, *path: int) -> str:
        return self.by_path.get(path, "")


def _dedent(comment: str) -> str:
    """protoc keeps the one space after `//`: drop it, keep the rest of the layout."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()


_CODE_SPAN = re.compile(r"(`[^`]*`)")


def _markdown(text: str) -> str:
    """A comment as Markdown: written as plain text with `code`, so only what Markdown
    would swallow as HTML (a bare <token>) is escaped, outside code spans."""
    pieces = _CODE_SPAN.split(text)
    return "".join(piece if piece.startswith("`") else piece.replace("<", "&lt;") for piece in pieces)


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else "" for line in text.split("\n"))


def _anchor(full_name: str) -> str:
    """The heading id of a type of this package: its name without the package."""
    return full_name.removeprefix(f".{PACKAGE}.").replace(".", "-").lower()


def _type_link(type_name: str) -> str:
    """A message or enum type, linked when it is one of this package's."""
    if type_name.startswith(f".{PACKAGE}."):
        short = type_name.removeprefix(f".{PACKAGE}.")
        return f"[`{short}`](#{_anchor(type_name)})"
    return f"`{type_name.lstrip('.')}`"


class _Index:
    """Every message of the package by full name, to render map fields as map<K, V>."""

    def __init__(self, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in files:
            for message in file.message_type:
                self._add(f".{file.package}.{message.name}", message)

    def _add(self, name: str, message: descriptor_pb2.DescriptorProto) -> None:
        self.messages[name] = message
        for nested in message.nested_type:
            self._add(f"{name}.{nested.name}", nested)

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in _SCALARS:
            base = f"`{_SCALARS[field.type]}`"
        else:
            entry = self.messages.get(field.type_name)
            if entry is not None and entry.options.map_entry:
                key, value = entry.field
                return f"map<{self.field_type(key).strip('`')}, {self.field_type(value).strip('`')}>".join("``")
            base = _type_link(field.type_name)
        if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
            return f"repeated {base}"
        if field.proto3_optional:
            return f"optional {base}"
        return base


def _service(
    file: descriptor_pb2.FileDescriptorProto,
    comments: _Comments,
    index: int,
    service: descriptor_pb2.ServiceDescriptorProto,
) -> Iterator[str]:
    yield f"## Service `{file.package}.{service.name}` {{#{service.name.lower()}}}"
    yield ""
    yield _markdown(comments.get(_FILE_SERVICE, index))
    yield ""
    yield "| RPC | Request | Response |"
    yield "|---|---|---|"
    for method in service.method:
        request = ("stream " if method.client_streaming else "") + _type_link(method.input_type)
        response = ("stream " if method.server_streaming else "") + _type_link(method.output_type)
        yield f"| [`{method.name}`](#rpc-{method.name.lower()}) | {request} | {response} |"
    yield ""
    for number, method in enumerate(service.method):
        request = ("stream " if method.client_streaming else "") + _type_link(method.input_type)
        response = ("stream " if method.server_streaming else "") + _type_link(method.output_type)
        yield f"### {method.name} {{#rpc-{method.name.lower()}}}"
        yield ""
        yield f"`rpc {method.name}` ({request}) returns ({response})"
        yield ""
        text = comments.get(_FILE_SERVICE, index, _SERVICE_METHOD, number)
        if text:
            yield _markdown(text)
            yield ""


def _message(
    package: str,
    message: descriptor_pb2.DescriptorProto,
    comments: _Comments,
    path: tuple[int, ...],
    prefix: str,
    types: _Index,
) -> Iterator[str]:
    if message.options.map_entry:
        return  # shown as map<K, V> on the field that holds it
    name = f"{prefix}{message.name}"
    yield f"### {name} {{#{_anchor(f'.{package}.{name}')}}}"
    yield ""
    text = comments.get(*path)
    if text:
        yield _markdown(text)
        yield ""
    real_oneofs = {
        i: oneof.name
        for i, oneof in enumerate(message.oneof_decl)
        if not any(f.proto3_optional and f.oneof_index == i and f.HasField("oneof_index") for f in message.field)
    }
    if not message.field:
        yield "*No fields.*"
        yield ""
    for number, field in enumerate(message.field):
        oneof = ""
        if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
            oneof = f" · oneof `{real_oneofs[field.oneof_index]}`"
        yield f"- **`{field.name}`** {types.field_type(field)} · {field.number}{oneof}"
        text = comments.get(*path, _MESSAGE_FIELD, number)
        if text:
            yield ""
            yield _indent(_markdown(text))
            yield ""
    yield ""
    for number, enum in enumerate(message.enum_type):
        yield from _enum(package, enum, comments, (*path, _MESSAGE_ENUM, number), f"{name}.")
    for number, nested in enumerate(message.nested_type):
        yield from _message(package, nested, comments, (*path, _MESSAGE_NESTED, number), f"{name}.", types)


def _enum(
    package: str, enum: descriptor_pb2.EnumDescriptorProto, comments: _Comments, path: tuple[int, ...], prefix: str
) -> Iterator[str]:
    name = f"{prefix}{enum.name}"
    yield f"### {name} {{#{_anchor(f'.{package}.{name}')}}}"
    yield ""
    text = comments.get(*path)
    if text:
        yield _markdown(text)
        yield ""
    for number, value in enumerate(enum.value):
        yield f"- **`{value.name}`** = {value.number}"
        text = comments.get(*path, _ENUM_VALUE, number)
        if text:
            yield ""
            yield _indent(_markdown(text))
            yield ""
    yield ""


def render(files: descriptor_pb2.FileDescriptorSet) -> str:
    ours = sorted((f for f in files.file if f.package == PACKAGE), key=lambda f: (f.name != SERVICE_FILE, f.name))
    types = _Index(ours)
    lines = [
        "<!-- Generated by scripts/gen_api_docs.py from proto/metering/v1/*.proto: do not edit. -->",
        "",
        "# API reference",
        "",
        f"Package `{PACKAGE}`, generated from the comments of `proto/metering/v1/*.proto` (the contract).",
        "Quantities and money are decimal strings; times are `google.protobuf.Timestamp`.",
        "Each field shows its type and field number.",
        "",
    ]
    for file in ours:
        comments = _Comments.of(file)
        for index, service in enumerate(file.service):
            lines.extend(_service(file, comments, index, service))
    for file in ours:
        if not file.message_type and not file.enum_type:
            continue
        comments = _Comments.of(file)
        lines.extend([f"## `{file.name}`", ""])
        for index, enum in enumerate(file.enum_type):
            lines.extend(_enum(file.package, enum, comments, (_FILE_ENUM, index), ""))
        for index, message in enumerate(file.message_type):
            lines.extend(_message(file.package, message, comments, (_FILE_MESSAGE, index), "", types))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def generate(output: Path = DEFAULT_OUTPUT) -> bool:
    """Write the reference to `output`; True when its content changed. An unchanged file is
    left alone so that `mkdocs serve`, which watches docs/, does not rebuild in a loop."""
    text = render(descriptor_set())
    if output.exists() and output.read_text(encoding="utf-8") == text:
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="default: docs/api/reference.md")
    args = parser.parse_args(argv)
    changed = generate(args.output)
    print(f"{args.output}: {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
