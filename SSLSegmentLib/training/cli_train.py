"""What ``sslsegment train`` does before and after the trainer: check the settings, claim
the run folder (create, lock, refuse a folder of another run), remember the arguments for
``--resume``, and release the folder at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write_json
from ..run_protocol import COMMAND_FILE, DONE, read_run_status
from .run_folder import RunFolder

_PATH_ARGUMENTS = ("images", "labels", "dataset", "out", "cache_dir", "init_model")
_NOT_SAVED = ("resume", "overwrite", "threads", "command")


def saved_arguments(args: argparse.Namespace) -> dict:
    """The train arguments as JSON (paths absolute, so a resume works from any folder)."""
    saved = {}
    for key, value in vars(args).items():
        if key in _NOT_SAVED:
            continue
        if isinstance(value, Path):
            value = str(value.resolve())
        saved[key] = value
    return saved


def arguments_to_resume(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments of the run in ``args.resume``; InputError when it cannot be resumed."""
    folder = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise InputError(f"--resume {folder} goes on in that folder; leave out --out {args.out}")
    if args.overwrite:
        raise InputError("--resume and --overwrite exclude each other: resume keeps the run, overwrite replaces it")
    try:
        saved = json.loads((folder / COMMAND_FILE).read_text(encoding="utf-8"))["arguments"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"--resume {folder}: not a resumable run folder (no readable {COMMAND_FILE}); "
                         "give the folder of a run made by `sslsegment train`") from error
    status = read_run_status(folder) or {}
    if status.get("state") == DONE:
        raise InputError(f"--resume {folder}: this run is already done; give --overwrite to train it again")
    _refuse_changed_settings(args, saved, folder)
    restored = {k: Path(v) if k in _PATH_ARGUMENTS and v is not None else v for k, v in saved.items()}
    merged = {**restored, "resume": folder, "overwrite": False, "threads": getattr(args, "threads", None),
              "command": "train", "out": folder}
    merged["method_option"] = list(merged.get("method_option") or [])
    merged["ct_window"] = tuple(merged["ct_window"]) if merged.get("ct_window") else None
    merged["patch_size"] = tuple(merged["patch_size"]) if merged.get("patch_size") else None
    return argparse.Namespace(**merged)


def _refuse_changed_settings(args: argparse.Namespace, saved: dict, folder: Path) -> None:
    """A resumed run keeps its own settings, so one given with --resume that differs from
    them would be dropped silently: refuse it, naming each."""
    from ..train_arguments import train_parser  # noqa: PLC0415

    as_saved = lambda namespace: json.loads(json.dumps(saved_arguments(namespace)))  # noqa: E731 (tuples as lists)
    defaults = as_saved(train_parser().parse_args(["train"]))
    changed = [f"--{key.replace('_', '-')} {_shown(value)} (the run's: {_shown(saved.get(key))})"
               for key, value in as_saved(args).items()
               if key != "out" and key in defaults and value != defaults[key] and value != saved.get(key)]
    if changed:
        raise InputError(f"--resume {folder} goes on with the run's own settings, but other ones were given: "
                         f"{'; '.join(changed)}. Leave them out to resume, or start a new run with --out")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _check_settings(args: argparse.Namespace) -> None:
    """Settings refused before any folder exists (the trainer checks them again)."""
    from ..train_arguments import config_from_args  # noqa: PLC0415
    from ..settings_check import check_train_settings  # noqa: PLC0415

    if args.out is None:
        raise InputError("give --out (the run folder to create), or --resume RUN")
    check_train_settings(config_from_args(args))


def _check_method(args: argparse.Namespace) -> None:
    """The method and its options (needs the method registry, hence torch: not in Slicer)."""
    from ..train_arguments import config_from_args  # noqa: PLC0415
    from ..methods import method_class  # noqa: PLC0415
    from ..settings_check import check_method_options  # noqa: PLC0415

    config = config_from_args(args)
    check_method_options(config.method, config.method_options, method_class(config.method).all_options())


@contextlib.contextmanager
def run_folder_claimed(args: argparse.Namespace):
    """Yield ``(args, context, run)`` with the run folder created and locked by rank 0.

    Refusals (bad settings, a folder that is a file or read-only, a folder in use by a live
    run, a finished run without --resume/--overwrite) raise InputError before anything in
    the folder changes; with several ranks all of them learn of it and stop.
    """
    from . import distributed  # noqa: PLC0415
    from .run_lock import claim_run_folder  # noqa: PLC0415

    if getattr(args, "resume", None):
        args = arguments_to_resume(args)
    _check_settings(args)
    _check_method(args)
    wants_cuda = args.device == "cuda" or (args.device == "auto" and distributed.cuda_available())
    context = distributed.init_from_env("cuda" if wants_cuda else "cpu")
    lock, refusal = None, None
    if context.is_main:
        try:
            lock = claim_run_folder(args.out, resume=bool(args.resume), overwrite=bool(args.overwrite))
        except InputError as error:
            refusal = error
    if context.any(refusal is not None):
        distributed.shutdown(context)
        raise refusal if refusal is not None else InputError(f"rank 0 could not claim the run folder {args.out}")
    run = RunFolder(args.out, writer=context.is_main)
    try:
        if context.is_main:
            atomic_write_json(run.path / COMMAND_FILE, {"arguments": saved_arguments(args)})
        yield args, context, run
    finally:
        if lock is not None:
            lock.release()


def check_train_arguments(argv: list[str]) -> None:
    """The checks of ``sslsegment train`` on a command line, without running it (torch-free):
    the Slicer logic refuses bad settings before it starts a child process."""
    import io  # noqa: PLC0415
    from contextlib import redirect_stderr  # noqa: PLC0415

    from ..train_arguments import train_parser  # noqa: PLC0415

    messages = io.StringIO()
    try:
        with redirect_stderr(messages):
            args = train_parser().parse_args(argv)
    except SystemExit:
        problem = messages.getvalue().strip().splitlines()
        raise InputError(f"training settings not understood: {problem[-1] if problem else ' '.join(argv)}") from None
    if getattr(args, "resume", None):
        args = arguments_to_resume(args)
    _check_settings(args)
