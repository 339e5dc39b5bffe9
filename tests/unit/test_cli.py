"""The `metering` command without a service: parsing (options anywhere), the exit-status
table, `record --price`, the import file formats, and what --json prints."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
from pathlib import Path

import grpc
import pytest

from metering.cli import build_parser, completion, effective_config, main, sources
from metering.cli.calls import record_target
from metering.cli.exits import Exit, UsageError, for_error
from metering.cli.parsing import add_command, subcommands
from metering.cli.render import as_json, requested_refusal
from metering.client.errors import ErrorDetails, MeteringError, decode
from metering.config.settings import Settings
from metering.v1 import events_pb2, usage_pb2


def _error(code: grpc.StatusCode, reason: str = "", **metadata: str) -> MeteringError:
    details = ErrorDetails(reason=reason, metadata=metadata, field_violations=(), retry_delay=None, messages={})
    return decode(code, "refused", details)


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command's path (("record",), ("token", "new"), ...)."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, (*path, name))
                found.extend(nested or [(*path, name)])
    return found


def _leaf(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


# -- exit statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "", Exit.UNAVAILABLE),  # nothing listening
        (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", Exit.UNAVAILABLE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", Exit.UNAVAILABLE),
        (grpc.StatusCode.CANCELLED, "", Exit.UNAVAILABLE),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", Exit.UNAVAILABLE),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", Exit.USAGE),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", Exit.USAGE),
        (grpc.StatusCode.INVALID_ARGUMENT, "", Exit.USAGE),  # from a proxy: no reason
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED", Exit.REFUSED),
        (grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND", Exit.REFUSED),
        (grpc.StatusCode.ALREADY_EXISTS, "TRANSACTION_ID_CONFLICT", Exit.REFUSED),
        (grpc.StatusCode.FAILED_PRECONDITION, "PERIOD_CLOSED", Exit.REFUSED),
        (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING", Exit.REFUSED),
        (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED", Exit.REFUSED),
        (grpc.StatusCode.INTERNAL, "INTERNAL", Exit.REFUSED),
        (grpc.StatusCode.UNKNOWN, "", Exit.REFUSED),
    ],
)
def test_each_client_error_has_its_exit_status(code: grpc.StatusCode, reason: str, expected: Exit) -> None:
    assert for_error(_error(code, reason)) == expected


def test_the_exit_statuses_are_distinct_and_conventional() -> None:
    assert [int(e) for e in Exit] == [0, 1, 2, 3]


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["balance", "c", "--json", "m"],
        ["balance", "--json", "c", "m"],
        ["balance", "c", "m", "--json"],
        ["balance", "--target", "h:1", "c", "--json", "m"],
    ],
)
def test_options_go_anywhere(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.customer_id, args.meter_slug, args.json) == ("c", "m", True)


def test_options_anywhere_in_record_and_nested_commands() -> None:
    args = build_parser().parse_args(["record", "c", "--property", "a=b", "m", "--json", "5"])
    assert (args.customer_id, args.meter_slug, args.quantity, args.property) == ("c", "m", "5", ["a=b"])
    token = build_parser().parse_args(["token", "new", "--role", "admin", "ops"])
    assert (token.name, token.role) == ("ops", ["admin"])


def test_bad_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["balance", "c", "m", "extra"])
    assert exited.value.code == Exit.USAGE
    assert "unrecognized arguments: extra" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"metering {version('metering')}"


def test_every_command_has_examples_and_exit_statuses_in_its_help() -> None:
    commands = _commands(build_parser())
    assert {("record",), ("events",), ("import",), ("token", "new"), ("webhooks", "replay")} <= set(commands)
    for path in commands:
        text = _leaf(path).format_help()
        examples = text.partition("\nexamples:\n")[2].partition("\n\nexit status:\n")
        assert "metering " + " ".join(path) in examples[0], path
        assert examples[2].startswith("  0  "), path
    assert "3  no answer" in build_parser().format_help()


def test_a_usage_error_raised_by_a_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any connection is made: no service needed.
    assert main(["events", "c", "--start", "yesterday", "--target", "127.0.0.1:9"]) == Exit.USAGE
    assert "--start 'yesterday' is not an RFC 3339 time" in capsys.readouterr().err
    assert main(["record", "c", "m", "--property", "novalue", "--target", "127.0.0.1:9"]) == Exit.USAGE


# -- record --price ------------------------------------------------------------------------


def test_record_names_a_meter_or_a_price() -> None:
    assert record_target("tokens", "5", "") == ("tokens", "", "5")
    assert record_target("tokens", "", "") == ("tokens", "", "")
    assert record_target("5", "", "tokens_premium") == ("", "tokens_premium", "5")  # the meter is the price's
    assert record_target("", "", "tokens_premium") == ("", "tokens_premium", "")
    with pytest.raises(UsageError, match="not two values"):
        record_target("tokens", "5", "tokens_premium")
    with pytest.raises(UsageError, match="give the meter"):
        record_target("", "", "")


# -- --json --------------------------------------------------------------------------------


def test_json_keeps_empty_lists_and_zero_values() -> None:
    assert json.loads(as_json(events_pb2.ListUsageEventsResponse())) == {"events": [], "next_page_token": ""}
    balance = json.loads(as_json(usage_pb2.Balance(meter_slug="m", used="0")))
    assert balance["used"] == "0" and balance["granted"] == "" and balance["approaching_limit"] is False
    assert "limit" not in balance  # a field with presence, unset: unlimited


def test_a_requested_quantity_that_does_not_fit_says_why() -> None:
    answer = usage_pb2.CheckBalanceResponse(
        balances=[usage_pb2.Balance(meter_slug="tokens", unit="token", used="30", reserved="0", limit="100")]
    )
    answer.balances[0].available = "70"
    assert requested_refusal(answer) is None  # nothing requested
    answer.requested_allowed = True
    assert requested_refusal(answer) is None
    answer.requested_allowed = False
    assert requested_refusal(answer) == (
        "the requested quantity does not fit: tokens has 70 token available (limit 100, 30 used, 0 reserved)"
    )


# -- import formats ------------------------------------------------------------------------


def test_json_lines_are_told_by_their_first_line() -> None:
    line = b'{"customer_id": "c", "meter_slug": "m", "quantity": "2", "transaction_id": "t"}\n'
    parsed = sources.detect(line, file_name="f").request(line)
    assert (parsed.customer_id, parsed.meter_slug, parsed.quantity, parsed.transaction_id) == ("c", "m", "2", "t")
    assert isinstance(sources.detect(b"", file_name="f"), sources.JsonLines)  # an empty file
    with pytest.raises(sources.LineRefused, match="not a RecordUsageRequest"):
        sources.JsonLines().request(b"{not json\n")
    with pytest.raises(UsageError, match="is a JSON array"):
        sources.detect(b'[{"customer_id": "c"}]', file_name="f")


def test_a_csv_row_becomes_the_same_request_as_its_json_line() -> None:
    header = b"customer_id,meter_slug,quantity,transaction_id,eventTime,properties.model,properties.region\r\n"
    rows = sources.detect(header, file_name="usage.csv")
    row = rows.request(b'acme,ai_tokens,1500,req-42,2026-11-01T10:00:00Z,"small, fast",\r\n')
    line = (
        b'{"customer_id": "acme", "meter_slug": "ai_tokens", "quantity": "1500", "transaction_id": "req-42",'
        b' "event_time": "2026-11-01T10:00:00Z", "properties": {"model": "small, fast"}}'
    )
    assert row == sources.JsonLines().request(line)  # the empty region cell sets no property
    by_price = sources.detect(b"\xef\xbb\xbfcustomer_id;price_slug;transaction_id\n", file_name="f")  # BOM, ;
    assert by_price.request(b"acme;ai_tokens_graduated;t1\n").price_slug == "ai_tokens_graduated"


def test_a_bad_csv_row_is_rejected_and_the_import_goes_on() -> None:
    rows = sources.csv_header(b"customer_id,meter_slug,quantity,transaction_id", file_name="f")
    with pytest.raises(sources.LineRefused, match="3 cells where the header names 4 columns"):
        rows.request(b"acme,ai_tokens,5\n")
    with pytest.raises(sources.LineRefused, match="not a RecordUsageRequest"):
        sources.csv_header(b"customer_id,meter_slug,enforcement_mode,transaction_id", file_name="f").request(
            b"acme,m,SOMETIMES,t\n"
        )


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        (b"acme,ai_tokens,1500,req-42\n", "looks like CSV, but its first line is not a header naming the columns"),
        (b"customer,meter,quantity,transaction\n", "unknown columns: customer, meter, transaction"),
        (b"customer_id,meter,quantity,transaction_id\n", "its header names unknown columns: meter"),
        (b"customer_id,meter_slug,quantity\n", "its header lacks transaction_id"),
        (b"customer_id,quantity,transaction_id\n", "its header lacks meter_slug or price_slug"),
        (b"customer_id,meter_slug,meterSlug,transaction_id\n", "names a column twice: meter_slug"),
        (b"\xff\xfe,\n", "its first line is not UTF-8 text"),
    ],
)
def test_a_csv_file_without_a_usable_header_is_refused(first_line: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message) as refused:
        sources.detect(first_line, file_name="usage.csv")
    assert str(refused.value).startswith("metering import: usage.csv looks like CSV")


def test_the_head_of_a_file_is_its_first_non_blank_line() -> None:
    head = sources.read_head(io.BytesIO(b"\n  \ncustomer_id,meter_slug,transaction_id\nacme,m,t\n"))
    assert (head.line, head.end_offset, head.line_number) == (b"customer_id,meter_slug,transaction_id\n", 42, 3)
    assert sources.read_head(io.BytesIO(b"\n\n")).line_number == 0


# -- metering config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/metering", "postgresql://app:****@db:5432/metering"),
        ("postgresql://app@db/metering", "postgresql://app@db/metering"),  # no password
        ("postgresql://app:p@ss@db1:5432,db2:5432/m?x=1", "postgresql://app:****@db1:5432,db2:5432/m?x=1"),
        (
            "postgresql://db/m?user=app&password=s3cret&sslmode=require",
            "postgresql://db/m?user=app&password=****&sslmode=require",
        ),
        ("postgresql://db/m?sslpassword=k#frag", "postgresql://db/m?sslpassword=****#frag"),
        ("https://api.stripe.com", "https://api.stripe.com"),
        ("not a url", "not a url"),
    ],
)
def test_url_passwords_are_masked(url: str, masked: str) -> None:
    assert effective_config.mask_url(url) == masked


def test_durations_print_as_they_are_written() -> None:
    from datetime import timedelta

    texts = [effective_config.duration_text(timedelta(seconds=s)) for s in (0, 0.002, 1.5, 2, 300, 7200, 35 * 86400)]
    assert texts == ["0s", "2ms", "1500ms", "2s", "5m", "2h", "35d"]


def test_the_effective_settings_mask_secrets_and_say_where_each_came_from() -> None:
    env = {
        "METERING_DATABASE_URL": "postgresql://app:s3cret@db/m",
        "METERING_GRPC_PORT": "6000",
        "METERING_ALLOW_UNAUTHENTICATED": "1",
        "STRIPE_API_KEY": "sk_live_s3cret",
    }
    shown = {s.variable: s for s in effective_config.effective(Settings.from_env(env), env)}
    assert shown["METERING_DATABASE_URL"] == effective_config.Shown(
        "METERING_DATABASE_URL", "postgresql://app:****@db/m", "environment"
    )
    assert (shown["METERING_GRPC_PORT"].value, shown["METERING_GRPC_PORT"].source) == ("6000", "environment")
    assert (shown["METERING_DB_TIMEOUT"].value, shown["METERING_DB_TIMEOUT"].source) == ("2s", "default")
    assert shown["METERING_STRIPE_API_KEY / STRIPE_API_KEY"].value == "****"
    assert shown["METERING_WEBHOOK_RETRY_SCHEDULE"].value == "0s,5s,5m,30m,2h,5h,10h,10h"
    assert shown["METERING_CATALOG"].value == "(unset: the packaged sample catalog)"
    assert not any("s3cret" in s.value for s in shown.values())


def test_every_setting_printed_is_documented(repo_root: Path) -> None:
    table = (repo_root / "docs" / "configuration.md").read_text()
    for shown in effective_config.effective(Settings.from_env({}), {}):
        for variable in shown.variable.split(" / "):
            assert f"`{variable}`" in table, variable


def test_config_prints_settings_and_files_and_exits_2_on_a_bad_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("METERING_DATABASE_URL", "METERING_AUTH_FILE", "METERING_CATALOG", "METERING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METERING_TOKEN", "mtr_s3cret")
    assert main(["config", "--json"]) == Exit.OK
    printed = json.loads(capsys.readouterr().out)
    assert printed["valid"] is True
    assert printed["settings"]["METERING_GRPC_PORT"] == {"value": "50051", "source": "default"}
    assert printed["client"]["METERING_TOKEN"] == {"value": "****", "source": "environment"}
    assert printed["files"]["METERING_AUTH_FILE"]["path"] == "(unset: no authentication)"

    monkeypatch.setenv("METERING_GRPC_PORT", "http")
    assert main(["config"]) == Exit.USAGE
    assert capsys.readouterr().err == "metering: METERING_GRPC_PORT='http': expected a whole number\n"

    monkeypatch.delenv("METERING_GRPC_PORT")
    monkeypatch.setenv("METERING_CATALOG", str(tmp_path / "missing.toml"))
    monkeypatch.setenv("METERING_DATABASE_URL", "postgresql://app:s3cret@db/m")
    monkeypatch.setenv("METERING_ALLOW_UNAUTHENTICATED", "1")
    assert main(["config"]) == Exit.USAGE
    out, err = capsys.readouterr()
    assert any(line.split()[-1] == "MISSING" for line in out.splitlines() if "METERING_CATALOG" in line)
    assert err.startswith("metering config: not valid: ") and "missing.toml" in err
    assert "s3cret" not in out + err


# -- shell completion ----------------------------------------------------------------------


def _bash_completes(*words: str) -> list[str]:
    """What the generated bash script offers for the command line `words` (the last one being typed)."""
    script = completion.bash(completion.tree(build_parser()))
    quoted = " ".join(shlex.quote(w) for w in words)
    call = f"COMP_WORDS=({quoted}); COMP_CWORD=$(({len(words)} - 1)); _metering"
    probe = f'{script}\n{call}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_choices_from_the_parser() -> None:
    assert _bash_completes("metering", "re") == ["reload", "record", "reserve", "release"]
    assert _bash_completes("metering", "record", "acme", "--pr") == ["--price", "--property"]
    assert _bash_completes("metering", "usage", "acme", "--target", "h:1", "--window", "") == ["day", "hour", "month"]
    assert _bash_completes("metering", "token", "") == ["new", "digest"]
    assert _bash_completes("metering", "token", "new", "ops", "--role", "r") == ["recorder", "reader"]
    assert _bash_completes("metering", "completion", "") == ["bash", "zsh", "fish"]
    assert _bash_completes("metering", "import", "") == []  # a file: bash's own file names


def test_every_command_and_option_is_in_every_script() -> None:
    root = completion.tree(build_parser())
    scripts = {
        shell: {"bash": completion.bash, "zsh": completion.zsh, "fish": completion.fish}[shell](root)
        for shell in completion.SHELLS
    }
    assert scripts["zsh"].startswith("#compdef metering\n") and "bashcompinit" in scripts["zsh"]
    for command in root.walk():
        for option in command.options:
            for flag in option.flags:
                assert flag in scripts["bash"], (command.path, flag)
        if command.path:
            assert f"-a {command.path[-1]} -d " in scripts["fish"], command.path
    assert (
        "complete -c metering -n '__fish_seen_subcommand_from events' -l page-token -r "
        "-d 'continue from a previous answer'\"'\"'s next_page_token'" in scripts["fish"]
    )
    assert (
        "complete -c metering -n '__fish_seen_subcommand_from usage' -l window -x -a 'day hour month'"
        in scripts["fish"]
    )


def test_a_new_command_completes_without_touching_the_generator() -> None:
    parser = argparse.ArgumentParser(prog="metering")
    commands = subcommands(parser, "command")
    customers = add_command(commands, "customers", "list customers", None, examples=["metering customers"])
    customers.add_argument("--plan", choices=["free", "pro"])
    script = completion.bash(completion.tree(parser))
    assert "'') echo customers ;;" in script and "'customers --plan') echo 'free pro' ;;" in script


def test_the_completion_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == Exit.OK
    assert capsys.readouterr().out.startswith("# fish completion for metering")
