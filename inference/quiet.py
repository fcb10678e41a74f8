"""Library console noise (tqdm bars, tokenizer length warnings) off, for the CLI and the bot, which
report progress themselves."""

from __future__ import annotations


def silence_library_output() -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
