"""Tests for radar_gguf.sizes: CLI size parsing and formatting."""

from __future__ import annotations

import argparse

import pytest

from radar_gguf.sizes import argparse_size, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64k", 65536),
        ("64K", 65536),
        ("128K", 131072),
        ("32768", 32768),
        ("1m", 1048576),
        ("1M", 1048576),
        ("2g", 2 << 30),
        ("0.5k", 512),
        ("1.5m", 1572864),
        (".5k", 512),
        ("1.", 1),
        ("1.0", 1),
        ("1", 1),
        ("  64k ", 65536),
        ("64 k", 65536),
        ("+8k", 8192),
        ("32_768", 32768),
    ],
)
def test_parse_size_valid(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected a positive whole number"),
        ("   ", "expected a positive whole number"),
        ("k", "expected a positive whole number"),
        ("abc", "expected a positive whole number"),
        ("64x", "expected a positive whole number"),
        ("64kb", "expected a positive whole number"),
        ("1.2.3", "expected a positive whole number"),
        ("1e3", "expected a positive whole number"),
        ("nan", "expected a positive whole number"),
        ("inf", "expected a positive whole number"),
        ("0x10", "expected a positive whole number"),
        ("64kk", "expected a positive whole number"),
        ("0", "must be positive"),
        ("0k", "must be positive"),
        ("0.0", "must be positive"),
        ("-1", "must be positive"),
        ("-64k", "must be positive"),
        ("0.3k", "307.2 is not a whole number"),
        ("1.5", "1.5 is not a whole number"),
        ("0.0001m", "is not a whole number"),
    ],
)
def test_parse_size_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    assert fragment in str(exc.value)
    assert repr(text) in str(exc.value)  # the message quotes what the user typed


def test_parse_size_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        parse_size(64)  # type: ignore[arg-type]


def test_argparse_size() -> None:
    assert argparse_size("64k") == 65536
    with pytest.raises(argparse.ArgumentTypeError, match="must be positive"):
        argparse_size("0")


def test_argparse_integration(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="radar-gguf")
    parser.add_argument("--ctx", type=argparse_size, default=4096)
    assert parser.parse_args(["--ctx", "32k"]).ctx == 32768
    with pytest.raises(SystemExit):
        parser.parse_args(["--ctx", "lots"])
    err = capsys.readouterr().err
    assert "--ctx" in err and "invalid size 'lots'" in err


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (65536, "64k"),
        (1024, "1k"),
        (1048576, "1m"),
        (3 << 30, "3g"),
        (1536, "1536"),
        (32768, "32k"),
        (1000, "1000"),
        (1, "1"),
        (0, "0"),
        (1025 << 20, "1025m"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


def test_format_size_invalid() -> None:
    with pytest.raises(ValueError):
        format_size(-1)
    with pytest.raises(TypeError):
        format_size(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_size(True)


@pytest.mark.parametrize(
    "n", [1, 7, 512, 1000, 1024, 1536, 4096, 65536, 131072, 1 << 20, 3 << 30, (1 << 40) + 1]
)
def test_round_trip(n: int) -> None:
    assert parse_size(format_size(n)) == n
