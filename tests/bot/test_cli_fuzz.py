"""Fuzzing the command line in-process: whatever the arguments (odd Unicode, lone surrogates as an
undecodable argv gives them, huge numbers, NaN, options in any order), `animebot` exits 0, 1 or 2, says
what is wrong in one line on stderr, never prints a traceback, and what it prints on stdout is valid UTF-8.

Only commands that need no model run: `generate --dry-run`, `models`, `tags search`, `tags import` of
a file that is not there. A bounded number of examples in CI; `ANIMEBOT_FUZZ_LONG=1` runs many more.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.cli import main

LONG = os.environ.get("ANIMEBOT_FUZZ_LONG") == "1"
FUZZ = settings(
    max_examples=5000 if LONG else 150,
    deadline=None,
    derandomize=not LONG,  # CI sees the same examples every run; a long run explores
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Known bugs in request validation, which another engineer fixes in bot/prompts/requests.py (issue 8, bug 11:
# a 400-digit --aspect raises OverflowError; a --size or --aspect number of over 4,300 digits makes int() raise
# ValueError). The fuzz passes over them (and goes on looking for others); test_huge_aspect_or_size below is
# the expected failure that names them.
# Text a hostile or unlucky user can pass: any code point, lone surrogates included (what Python makes of
# undecodable argv bytes), control characters, full-width forms, right-to-left marks.
odd_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, categories=None),  # anything, surrogates included
        st.sampled_from(["\udcff", "\udc80", "\x00", "\x1b", "\u200b", "\u202e", "ｅ", "\ufeff", "\n", ","]),
    ),
    max_size=40,
)
huge_number = st.one_of(
    st.integers().map(str),
    st.integers(min_value=10**18, max_value=10**400).map(str),
    st.integers(min_value=-(10**400), max_value=-1).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "0x10", "１２", "٣", "1_000", " 7 ", "", "9" * 5000]),
)
number_or_text = st.one_of(huge_number, odd_text)
aspect = st.one_of(
    st.builds(lambda w, h: f"{w}:{h}", huge_number, huge_number),
    st.sampled_from(["13:19", "1:1", "0:0", "1:0", ":", "a:b"]),
    odd_text,
)
size = st.one_of(st.builds(lambda w, h: f"{w}x{h}", huge_number, huge_number), odd_text)

VALUE_OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--model": st.one_of(st.sampled_from(["tiny-sdxl", "tiny-anima", "animagine-xl-4.0", "anima"]), odd_text),
    "--quality": st.one_of(st.sampled_from(["masterpiece", "best", "worst"]), odd_text),
    "--year": number_or_text,
    "--rating": st.one_of(st.sampled_from(["general", "explicit", "nsfw", "e"]), odd_text),
    "--artist": odd_text,
    "--negative": odd_text,
    "--seed": huge_number,
    "--steps": huge_number,
    "--cfg": huge_number,
    "--sampler": st.one_of(st.sampled_from(["euler_a", "flow_euler", "dpmpp_2m_karras"]), odd_text),
    "--count": huge_number,
}
FLAGS = ["--no-default-negative"]


@st.composite
def generate_argv(draw: st.DrawFn) -> list[str]:
    argv = ["generate", draw(st.one_of(odd_text, st.sampled_from(["1girl, smile", "night, 1girl"])))]
    for option in draw(st.lists(st.sampled_from([*VALUE_OPTIONS, *FLAGS]), max_size=6)):
        if option in FLAGS:
            argv.append(option)
        else:
            argv += [option, draw(VALUE_OPTIONS[option])]
    which = draw(st.sampled_from(["aspect", "size", "none"]))
    if which != "none":
        argv += [f"--{which}", draw(aspect if which == "aspect" else size)]
    return [*argv, "--dry-run"]


@st.composite
def other_argv(draw: st.DrawFn) -> list[str]:
    """Commands that need no model, plus plain noise (unknown commands and options)."""
    kind = draw(st.sampled_from(["models", "search", "import", "noise"]))
    if kind == "models":
        return ["models"]
    if kind == "search":
        argv = ["tags", "search", draw(odd_text)]
        if draw(st.booleans()):
            argv += ["--category", draw(st.one_of(st.sampled_from(["artist", "general"]), odd_text))]
        if draw(st.booleans()):
            argv += ["--model", draw(VALUE_OPTIONS["--model"])]
        return argv
    if kind == "import":
        return ["tags", "import", "/nonexistent/" + draw(odd_text)]
    return draw(st.lists(st.one_of(odd_text, st.sampled_from(["generate", "tags", "--count", "-h"])), max_size=5))


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage errors (2) and --help (0)
        code = exit_.code if isinstance(exit_.code, int) else 2
    except Exception as e:
        capsys.readouterr()
        raise AssertionError(f"argv {argv!r} raised {type(e).__name__}: {e}") from e
    out, err = capsys.readouterr()
    return code, out, err


def check(argv: list[str], code: int, out: str, err: str) -> None:
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    out.encode("utf-8")  # valid UTF-8 (a lone surrogate would raise here)
    err.encode("utf-8", "backslashreplace")
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("animebot"), (argv, err)
        assert "error: " in lines[0], (argv, err)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "config.toml"
    path.write_text('data_dir = "data"\n', encoding="utf-8")
    return path


@FUZZ
@given(argv=generate_argv())
def test_generate_dry_run_never_a_traceback(config: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    argv = [*argv, "--config", str(config)]
    code, out, err = run_cli(argv, capsys)
    check(argv, code, out, err)
    if code == 0:
        data = json.loads(out)
        assert isinstance(data["prompt"], str) and data["count"] >= 1, argv


@FUZZ
@given(argv=other_argv())
def test_other_commands_never_a_traceback(config: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    if argv[:1] in (["models"], ["tags"]):
        argv = [*argv, "--config", str(config)]
    code, out, err = run_cli(argv, capsys)
    check(argv, code, out, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "1girl", "--artist", "\udcff\udcfe", "--dry-run"],
        ["generate", "1girl", "--negative", "caf\udce9", "--dry-run"],
    ],
)
def test_undecodable_arguments_still_give_utf8_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Dry-run JSON stays valid UTF-8 (and valid JSON) whatever the input, or the input is refused."""
    code, out, err = run_cli(argv, capsys)
    check(argv, code, out, err)
    if code == 0:
        out.encode("utf-8")
        assert json.loads(out)["prompt"]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--aspect", "9" * 400 + ":1"),  # overflowed to inf (OverflowError) before the policy branch
        ("--size", "64x" + "9" * 5000),  # int() refuses over 4,300 digits (ValueError)
        ("--aspect", "1:" + "9" * 5000),
    ],
)
def test_huge_aspect_or_size(capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    code = main(["generate", "1girl", option, value, "--dry-run"])
    assert code == 2 and "Traceback" not in capsys.readouterr().err


def test_nul_in_paths(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    """Found by the long fuzz: a NUL in a path made the OS layer raise ValueError (a traceback)."""
    for argv in (
        ["tags", "import", "/nonexistent/\x00", "--config", str(config)],
        ["models", "--config", "/tmp/\x00.toml"],
        ["generate", "1girl", "--out", "out\x00", "--config", str(config)],
    ):
        code, out, err = run_cli(argv, capsys)
        check(argv, code, out, err)
        assert code == 2 and "\\x00" in err, (argv, err)


def test_undecodable_bytes_on_a_real_command_line(tmp_path: Path) -> None:
    """As a shell passes them: argv bytes that are not UTF-8 (Python turns them into lone surrogates)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}
    for extra in ([b"--artist", b"\xff\xfe"], [b"--quality", b"caf\xe9"], [b"--model", b"\xc3\x28"]):
        argv = [sys.executable.encode(), b"-m", b"bot", b"generate", b"1girl", *extra, b"--dry-run"]
        result = subprocess.run(argv, capture_output=True, cwd=tmp_path, env=env, timeout=60)
        assert result.returncode in (0, 2), result.stderr
        assert b"Traceback" not in result.stderr
        result.stdout.decode("utf-8")  # strict: valid UTF-8
        result.stderr.decode("utf-8")
        if result.returncode == 0:
            assert json.loads(result.stdout)["model"] == "tiny-sdxl"
        else:
            assert len(result.stderr.splitlines()) == 1


def test_a_number_too_long_for_int(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "1girl", "--seed", "9" * 5000, "--dry-run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "number too large: '9999" in err and "(5,000 characters)" in err and len(err) < 300


@pytest.mark.parametrize("value", ["²", "1²", "⑤"])
def test_a_digit_that_is_no_decimal_digit_is_not_a_whole_number(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """`²` is a digit to str.isdigit but no number to int(): "not a whole number", not "too large"."""
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "1girl", "--seed", value, "--dry-run"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"not a whole number: {value!r}" in err
