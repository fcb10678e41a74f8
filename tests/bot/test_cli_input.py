"""Hostile input on the command line: undecodable bytes in argv (Python hands them over as lone surrogates),
control characters and huge numbers give valid UTF-8 output or a one-line error, never a traceback; the same
text is stored in the database without an encoding error, with its content verdict. The in-process fuzz is
bounded in CI; ANIMEBOT_FUZZ_LONG=1 runs it long (see tests/fuzz.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.cli import main
from bot.config import load_config
from bot.core.jobs import JobOrigin, JobRepository
from bot.core.store import Store
from bot.prompts.builder import PromptChoices
from bot.prompts.requests import GenerationRequest, resolve_request
from tests.fuzz import fuzz_settings, nasty_text

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_with_a_surrogate_prints_valid_utf8_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["generate", "1girl, caf\udce9, \x00smile", "--negative", "\udcff\x07", "--dry-run", "--seed", "1",
         "--quality", "none"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    out.encode("utf-8")  # strict: a lone surrogate would raise here (and on a real stdout)
    data = json.loads(out)
    assert data["prompt"] == "1girl, caf\ufffd, smile" and "\x07" not in data["negative_prompt"]


def test_a_raw_undecodable_argv_byte_through_the_real_entry_point() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict UTF-8 stdout, whatever the test runner's locale
    result = subprocess.run(
        [sys.executable, "-m", "bot", "generate", b"1girl, \xff", "--dry-run", "--seed", "1", "--quality", "none"],
        capture_output=True, cwd=REPO, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert json.loads(result.stdout.decode("utf-8"))["prompt"] == "1girl, \ufffd"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "1girl", "--aspect", "9" * 400 + ":1"], "The aspect option is too long (402 characters"),
        (["generate", "1girl", "--aspect", "1:" + "9" * 90], None),
        (["generate", " , , "], "The prompt is empty."),
        (["generate", "@"], "The prompt is empty."),
        (["generate", "1girl", "--negative", "x" * 6000], "The negative option is too long"),
        (["generate", "1girl", "--rating", "\udcff" * 200], "The rating option is too long"),
        (["generate", "1girl", "--quality", "\udcffbogus"], "has no quality '\ufffdbogus'"),
    ],
)
def test_bad_input_is_one_clear_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str | None) -> None:
    code = main([*args, "--dry-run"])
    out, err = capsys.readouterr()
    (out + err).encode("utf-8")
    if message is None:
        assert code == 0 and json.loads(out)["height"] > json.loads(out)["width"]
    else:
        assert code == 2 and err.startswith("animebot: error: ") and message in err and len(err.splitlines()) == 1


async def test_surrogates_are_stored_and_the_verdict_with_them(tmp_path: Path) -> None:
    """The SQLite insert of a `\\xff` prompt raised UnicodeEncodeError; it now stores the normalized text."""
    models = load_config(None).models
    choices = PromptChoices("1girl, \udcff, ｅｘｐｌｉｃｉｔ", negative="\ud800")
    resolved = resolve_request(GenerationRequest("tiny-sdxl", choices), models)
    store = await Store.open(tmp_path / "animebot.sqlite")
    try:
        jobs = JobRepository(store)
        await jobs.ensure_user("cli:test")
        job = await jobs.get(await jobs.insert(resolved, JobOrigin("cli:test")))
        assert job is not None and job.verdict == resolved.verdict
        assert job.verdict.nsfw and job.verdict.ratings == ("explicit",)
        assert job.request.choices.prompt == "1girl, \ufffd, explicit"
        assert await store.scalar("SELECT verdict FROM jobs WHERE id = ?", (job.id,)) == resolved.verdict.to_json()
    finally:
        await store.close()


FLAGS = ["--model", "--quality", "--year", "--rating", "--artist", "--negative", "--seed", "--steps", "--cfg",
         "--sampler", "--aspect", "--size", "--count"]
FLAG_VALUES = st.one_of(
    nasty_text(30),
    st.sampled_from(["tiny-sdxl", "tiny-anima", "best", "2019", "explicit", "13:19", "64x64", "1", "0", "-1", "nan",
                     "inf", "1e400", "9" * 400, "euler_a", "flow_euler"]),
)


@fuzz_settings(60)
@given(nasty_text(80), st.lists(st.tuples(st.sampled_from(FLAGS), FLAG_VALUES), max_size=5))
def test_fuzz_the_cli_in_process(prompt: str, flags: list[tuple[str, str]]) -> None:
    """Random arguments: exit 0 with valid UTF-8 JSON, or exit 2 with one `animebot: error:` line (or
    argparse's usage error); never a traceback."""
    argv = ["generate", "--dry-run", *[part for flag in flags for part in flag], "--", prompt]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse: a value of the wrong type
            code = int(exit.code or 0)
            assert code == 2 and "error:" in err.getvalue()
            return
    out.getvalue().encode("utf-8")
    if code == 0:
        json.loads(out.getvalue())
    else:
        assert code == 2, err.getvalue()
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("animebot: error: "), lines
        lines[0].encode("utf-8")
