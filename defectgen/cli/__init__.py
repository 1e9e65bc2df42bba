"""The `defectgen` command line: one thin function per verb (parse, call the library, print).

Errors in the user's input surface as one line, `error: <file>: <problem>`, with exit code 2; `--debug` shows
the traceback instead. Library errors and notes name parameters in backticks (`out_dir`); they are shown here as
the verb's flags (--out). The verbs live in train.py, synth.py, evaluate.py and export.py; what they share in
common.py.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import typer

from defectgen import __version__
from defectgen.cli import evaluate, export, synth, train  # noqa: F401  (importing a module registers its verbs)
from defectgen.cli.common import app, console, flags, say
from defectgen.errors import DefectgenError, DefectgenWarning

__all__ = ["app", "main"]


def _version(value: bool) -> None:
    if value:
        print(f"defectgen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass  # --debug is read by main() from the command line itself


def _check_config(config: dict[str, dict], path: Path | None) -> dict[str, dict]:
    """defectgen.yaml's option defaults, checked against the verbs' own options: an unknown verb or key, or a value
    the option would refuse, is an error naming the file and the key. Keys may be written as on the command line
    (`out`, `mask-preset`) or as the option's name (`out_dir`)."""
    import difflib

    from defectgen.workspace import ALL_VERBS

    commands = getattr(typer.main.get_command(app), "commands", {})
    config = dict(config)
    for key, value in config.pop(ALL_VERBS, {}).items():  # a top-level option: every verb that has it
        having = [v for v, c in commands.items() if any(p.name == key for p in c.params)]
        if not having:
            raise DefectgenError(path, f"{key.replace('_', '-')}: no verb has this option")
        for verb in having:
            config.setdefault(verb, {}).setdefault(key, value)
    checked: dict[str, dict] = {}
    for verb, options in config.items():
        command = commands.get(verb)
        if command is None:
            close = difflib.get_close_matches(str(verb), list(commands), n=1)
            raise DefectgenError(path, f"unknown verb {verb!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        by_key = {}
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                by_key[param.name] = param
                for flag in param.opts + param.secondary_opts:
                    by_key[flag.lstrip("-").replace("-", "_")] = param
        ctx = typer.Context(command, info_name=verb)
        checked[verb] = {}
        for key, value in options.items():
            param = by_key.get(key)
            where = f"{verb}: {key.replace('_', '-')}"
            if param is None:
                close = difflib.get_close_matches(key, list(by_key), n=1)
                raise DefectgenError(path, f"{where}: unknown option" + (
                    f" (did you mean {close[0].replace('_', '-')}?)" if close else ""))
            try:
                param.process_value(ctx, value)
            except typer.BadParameter as e:
                raise DefectgenError(path, f"{where}: invalid value {value!r} ({e.format_message()})") from None
            checked[verb][param.name] = value
    return checked


def _interrupted(message: str, code: int = 130) -> None:
    console.print(message, highlight=False, soft_wrap=True)
    sys.exit(code)


def _resume_hint(checkpoint) -> str:
    """How to continue a stopped training: the same command with --resume (and --out, when the run folder was
    the workspace's choice; the checkpoint lies in <run folder>/checkpoints/)."""
    typed_out = any(a == "--out" or a.startswith("--out=") for a in sys.argv[1:])
    return "; resume with --resume" + ("" if typed_out else f" --out {Path(checkpoint).parent.parent}")


def _show_warning(message, category, *args, **kwargs) -> None:
    """DefectgenWarnings as one `warning:` line naming flags; other libraries' warnings as Python shows them."""
    if issubclass(category, DefectgenWarning):
        say(f"[yellow]warning:[/yellow] {message}")
    else:
        _python_showwarning(message, category, *args, **kwargs)


_python_showwarning = warnings.showwarning


def _run() -> None:
    from defectgen.workspace import config_file, load_config

    warnings.showwarning = _show_warning
    warnings.simplefilter("always", DefectgenWarning)  # every run says it, not only the first in a process

    default_map = _check_config(load_config(), config_file())  # defectgen.yaml: per-verb option defaults
    code = app(standalone_mode=False, default_map=default_map)
    # typer turns Ctrl-C outside our own handlers into a returned 130 rather than an exception
    if code == 130:
        _interrupted("interrupted; files already written are complete (writes are atomic)")
    if isinstance(code, int) and code:
        sys.exit(code)


def main() -> None:
    """Console entry point: one-line errors with exit code 2 unless --debug; Ctrl-C exits 130."""
    debug = "--debug" in sys.argv[1:]
    if not debug:  # library chatter (e.g. "requires torchvision, falling back") is not for users
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # its retry chatter while offline
    try:
        _run()
    except DefectgenError as e:
        if debug:
            raise
        if e.exit_code in (130, 143) and hasattr(e, "checkpoint"):  # training.Interrupted: Ctrl-C (130) or
            checkpoint = e.checkpoint  # SIGTERM (143), with the checkpoint saved on the way out
            _interrupted(flags(e.message) + (_resume_hint(checkpoint) if checkpoint else ""), e.exit_code)
        console.print(f"[red]error:[/red] {flags(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        _interrupted("aborted")
    except KeyboardInterrupt:
        _interrupted("interrupted; files already written are complete (writes are atomic)")
    except Exception as e:  # usage errors (bad option values) carry their own exit code and message
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        if debug:
            raise
        console.print(f"[red]error:[/red] {type(e).__name__}: {e} (run with --debug for the traceback)",
                      highlight=False, soft_wrap=True)
        sys.exit(1)
