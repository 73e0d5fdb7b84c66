"""The command line itself: global options anywhere, every option explained with its default, a quiet console."""

import argparse
import logging
import warnings

import pytest

from talkalike.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield action


def test_every_option_of_every_subcommand_has_a_help_text_that_states_its_default():
    parser = build_parser()
    missing, no_default = [], []
    for name, sub in [("talkalike", parser), *_subparsers(parser).items()]:
        help_text = sub.format_help()
        for action in _options(sub):
            flag = action.option_strings[-1]
            if not (action.help or "").strip():
                missing.append(f"{name} {flag}")
                continue
            takes_value = action.nargs != 0
            if not takes_value or action.required:
                continue
            if action.default not in (None, argparse.SUPPRESS):
                # the formatter shows it, unless the help says it in words
                shown = f"default: {action.default}" in " ".join(help_text.split()) or "default" in action.help
                if not shown:
                    no_default.append(f"{name} {flag}")
            elif "default" not in action.help:
                no_default.append(f"{name} {flag}")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not say the default: {no_default}"


def test_help_shows_a_numeric_default(capsys):
    with pytest.raises(SystemExit):
        main(["dataset", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 60.0)" in out and "(default: 1024)" in out


@pytest.mark.parametrize("before", [True, False])
def test_home_works_before_or_after_the_subcommand(tmp_path, monkeypatch, capsys, before):
    monkeypatch.delenv("TALKALIKE_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    home = tmp_path / "mine"
    argv = ["--home", str(home), "runs"] if before else ["runs", "--home", str(home)]
    assert main(argv) == 0
    assert home.is_dir()
    assert str(home / "runs") in capsys.readouterr().err
    assert not (tmp_path / "xdg").exists(), "the default data folder was used instead of --home"


def test_home_before_the_subcommand_is_not_overwritten_by_the_subcommands_default():
    args = build_parser().parse_args(["--home", "/x", "--verbose", "runs"])
    assert args.home == "/x" and args.verbose is True
    args = build_parser().parse_args(["runs", "--verbose"])
    assert args.home is None and args.verbose is True


def test_library_chatter_is_off_by_default_and_back_with_verbose(home, capsys):
    import transformers
    from transformers.utils import logging as hf_logging

    assert main(["runs"]) == 0
    assert hf_logging.get_verbosity() == logging.ERROR
    assert not hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a fresh interpreter does
        main(["runs"])
        warnings.warn("deprecated thing", FutureWarning, stacklevel=1)
    assert not caught, "a FutureWarning reached the console"
    assert main(["--verbose", "runs"]) == 0
    assert hf_logging.get_verbosity() == logging.INFO
    assert hf_logging.is_progress_bar_enabled()
    assert transformers  # imported so the live switches above are the ones the libraries read
    main(["runs"])  # leave the suite quiet


def test_config_dump_is_shown_with_verbose_only(capsys):
    from talkalike import console

    console.setup(verbose=False)
    console.detail("config: {}")
    assert "config" not in capsys.readouterr().err
    console.setup(verbose=True)
    console.detail("config: {}")
    assert "config: {}" in capsys.readouterr().err
    console.setup(verbose=False)


def test_the_stage_summary_says_how_long_what_came_out_and_what_to_run_next(capsys, monkeypatch):
    from talkalike import console

    console.setup()
    monkeypatch.setattr(console.time, "monotonic", lambda: console._state["started"] + 540)
    console.done("eval loss 2.35", "talkalike eval noa")
    assert capsys.readouterr().err.strip() == "done in 9 min, eval loss 2.35 → next: talkalike eval noa"
    assert console.elapsed(42) == "42 s" and console.elapsed(3900) == "1 h 05 min"
