"""`metering import events.jsonl` (or `events.csv`): a long import that is safe to repeat.

Each line is one RecordUsageRequest with its own transaction id: in the proto3 JSON
mapping, or a CSV row under a header naming the fields (metering.cli.sources, which
also refuses a file that is neither, before anything is sent). Lines go out in
RecordUsageBatch calls; a batch the service could not answer (UNAVAILABLE, deadline)
is sent again as it is, which the transaction ids make harmless. After every answered
batch the byte offset is saved to a checkpoint file, so an interrupted import resumes
where it stopped; even a stale checkpoint only replays events the ledger answers as
duplicates. Refused events (limits, bad fields) are written to a rejects file with
their line number and status, and the import goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from google.rpc import code_pb2, status_pb2

from metering.cli import parsing, sources
from metering.cli.connection import connection, connection_arguments, print_error
from metering.cli.exits import Exit, UsageError, for_error
from metering.cli.parsing import Subparsers
from metering.client import MeteringClient, MeteringError, RetryNotice, RetryPolicy, error_from_status
from metering.v1 import ingest_pb2, usage_pb2

_BATCH_TIMEOUT = 60.0  # seconds per attempt of one batch


def add_command(commands: Subparsers) -> None:
    parser = parsing.add_command(
        commands,
        "import",
        "record the events of a JSON-lines or CSV file in batches (idempotent, resumable)",
        run_import,
        examples=[
            "metering import events.jsonl",
            "metering import usage.csv --batch-size 1000   # header: customer_id,meter_slug,quantity,transaction_id",
            "metering import events.jsonl --restart --json",
        ],
        statuses=(
            "  0  every line recorded (or already recorded: duplicates)\n"
            "  1  done, with refused events (in the rejects file)\n"
            "  2  usage error: bad arguments, a file that is neither JSON lines nor CSV with a header\n"
            "  3  stopped: the service did not answer; run the same command again to resume"
        ),
    )
    parser.add_argument(
        "file",
        type=Path,
        help="one RecordUsageRequest per line: proto3 JSON, or CSV under a header naming the fields",
    )
    parser.add_argument(
        "--format", choices=sources.FORMATS, default="auto", help="auto (default): JSON if the first line starts with {"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="events per RecordUsageBatch call (1-1000)")
    parser.add_argument("--checkpoint", type=Path, help="progress file (default: FILE.checkpoint)")
    parser.add_argument("--rejects", type=Path, help="refused events, as JSON lines (default: FILE.rejects.jsonl)")
    parser.add_argument("--restart", action="store_true", help="ignore the checkpoint and start at line 1")
    parser.add_argument("--max-retries", type=int, default=8, help="resends of one batch before giving up")
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON")
    connection_arguments(parser)


@dataclass
class Progress:
    """What the checkpoint file holds: where to resume and what was counted so far."""

    file: str
    offset: int = 0  # bytes of the file fully answered
    line: int = 0  # lines fully answered
    recorded: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0


def run_import(args: argparse.Namespace) -> int:
    if not 1 <= args.batch_size <= 1000:
        raise UsageError("metering import: --batch-size must be 1 to 1000")
    try:
        with args.file.open("rb") as head_of_file:
            head = sources.read_head(head_of_file)
    except OSError as exc:
        raise UsageError(f"metering import: cannot read {args.file}: {exc.strerror}") from None
    line_format = sources.detect(head.line, file_name=str(args.file), forced=args.format)
    # A CSV file's events start after its header.
    first_event = (head.end_offset, head.line_number) if isinstance(line_format, sources.CsvRows) else (0, 0)
    checkpoint_path = args.checkpoint or args.file.with_name(args.file.name + ".checkpoint")
    rejects_path = args.rejects or args.file.with_name(args.file.name + ".rejects.jsonl")
    progress = _load_checkpoint(checkpoint_path, args.file, restart=args.restart)
    total_lines = _count_lines(args.file)
    meter = _ProgressMeter(total_lines, progress.line)
    if progress.line:
        print(f"resuming {args.file} at line {progress.line + 1} (checkpoint {checkpoint_path})", file=sys.stderr)
    # A batch the service could not answer (UNAVAILABLE, deadline) is sent again as it is, up to
    # --max-retries times, with backoff up to 10 s; refusals of single events come back in the answer.
    policy = RetryPolicy(
        max_attempts=args.max_retries + 1,
        initial_backoff=0.25,
        max_backoff=10.0,
        total_timeout=(args.max_retries + 1) * (_BATCH_TIMEOUT + 10.0),
    )

    def count_retry(notice: RetryNotice) -> None:
        progress.retries += 1

    with (
        MeteringClient(
            connection(args), timeout=_BATCH_TIMEOUT, retry=policy, wait_for_ready=False, on_retry=count_retry
        ) as client,
        args.file.open("rb") as source,
        rejects_path.open("a" if progress.line else "w", encoding="utf-8") as rejects,
    ):
        offset, line_number = max((progress.offset, progress.line), first_event)
        source.seek(offset)
        batch: list[tuple[int, usage_pb2.RecordUsageRequest]] = []
        for raw in source:
            offset += len(raw)
            line_number += 1
            if not raw.strip():
                continue
            try:
                request = line_format.request(raw)
            except sources.LineRefused as exc:
                _reject(rejects, progress, line_number, "", "INVALID_ARGUMENT", str(exc))
                continue
            batch.append((line_number, request))
            if len(batch) == args.batch_size:
                failure = _send(client, batch, rejects, progress)
                if failure is not None:
                    return _stop(checkpoint_path, progress, meter, failure)
                _save_checkpoint(checkpoint_path, progress, offset, line_number)
                meter.show(progress)
                batch = []
        failure = _send(client, batch, rejects, progress) if batch else None
        if failure is not None:
            return _stop(checkpoint_path, progress, meter, failure)
        _save_checkpoint(checkpoint_path, progress, offset, line_number)
    meter.show(progress, final=True)
    summary = {**asdict(progress), "rejects_file": str(rejects_path), "seconds": round(meter.elapsed(), 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"imported {args.file}: {progress.line} lines, {progress.recorded} recorded, "
            f"{progress.duplicates} duplicates, {progress.rejected} rejected"
            + (f" (see {rejects_path})" if progress.rejected else "")
            + f", {progress.retries} batch retries, {meter.rate():.0f} events/s"
        )
    return Exit.REFUSED if progress.rejected else Exit.OK


def _send(
    client: MeteringClient,
    batch: list[tuple[int, usage_pb2.RecordUsageRequest]],
    rejects: IO[str],
    progress: Progress,
) -> MeteringError | None:
    """One batch until it is answered (the client resends it); the error when the import must stop."""
    request = ingest_pb2.RecordUsageBatchRequest(events=[r for _, r in batch])
    try:
        response = client.call("RecordUsageBatch", request)
    except MeteringError as error:
        print_error(error)
        return error
    for result in response.results:
        line_number, event = batch[result.index]
        if result.status.code == code_pb2.OK:
            if result.response.duplicate:
                progress.duplicates += 1
            else:
                progress.recorded += 1
        else:
            _reject(
                rejects,
                progress,
                line_number,
                event.transaction_id,
                code_pb2.Code.Name(result.status.code),
                result.status.message,
                _reason(result.status),
            )
    return None


def _reason(status: status_pb2.Status) -> str:
    return error_from_status(status).reason


def _reject(
    rejects: IO[str], progress: Progress, line: int, transaction_id: str, code: str, message: str, reason: str = ""
) -> None:
    progress.rejected += 1
    record = {"line": line, "transaction_id": transaction_id, "code": code, "reason": reason, "message": message}
    rejects.write(json.dumps(record) + "\n")


def _stop(checkpoint_path: Path, progress: Progress, meter: _ProgressMeter, error: MeteringError) -> int:
    meter.show(progress, final=True)
    print(
        f"import stopped after line {progress.line}; run the same command again to resume (checkpoint "
        f"{checkpoint_path})",
        file=sys.stderr,
    )
    return for_error(error)


def _load_checkpoint(path: Path, source: Path, *, restart: bool) -> Progress:
    if restart or not path.exists():
        return Progress(file=str(source.resolve()))
    saved = Progress(**json.loads(path.read_text(encoding="utf-8")))
    if saved.file != str(source.resolve()):
        raise UsageError(f"metering import: {path} belongs to {saved.file}; use --checkpoint or --restart")
    if saved.offset > source.stat().st_size:
        raise UsageError(f"metering import: {source} is shorter than its checkpoint; use --restart")
    return saved


def _save_checkpoint(path: Path, progress: Progress, offset: int, line: int) -> None:
    progress.offset, progress.line = offset, line
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(asdict(progress)), encoding="utf-8")
    os.replace(temporary, path)  # atomic: a crash leaves the old or the new checkpoint, never half of one


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


class _ProgressMeter:
    """A progress bar on a terminal; a line every few seconds otherwise (logs, CI)."""

    def __init__(self, total_lines: int, start_line: int) -> None:
        self._total = max(total_lines, 1)
        self._start_line = start_line
        self._line = start_line
        self._started = time.monotonic()
        self._last_print = 0.0
        self._tty = sys.stderr.isatty()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def rate(self) -> float:
        return (self._line - self._start_line) / max(self.elapsed(), 1e-9)

    def show(self, progress: Progress, *, final: bool = False) -> None:
        self._line = progress.line
        now = time.monotonic()
        if not final and now - self._last_print < (0.2 if self._tty else 5.0):
            return
        self._last_print = now
        share = min(progress.line / self._total, 1.0)
        bar = "#" * int(share * 30)
        text = (
            f"[{bar:<30}] {share:4.0%} {progress.line:,}/{self._total:,} lines  {self.rate():,.0f} events/s  "
            f"recorded {progress.recorded:,}  duplicates {progress.duplicates:,}  rejected {progress.rejected:,}"
        )
        if self._tty:
            print("\r" + text, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)
