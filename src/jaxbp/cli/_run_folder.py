"""jaxbp train's --out folder: locked for the run, checked against what was asked, prepared or
resumed, and metrics.jsonl kept in step with the checkpoint."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from jaxbp import checkpoint
from jaxbp.cli._common import UsageError, bad_input
from jaxbp.cli._train_options import RESUMABLE
from jaxbp.train import CHECKPOINT_NAME


def metrics_writer(path: Path, resume: bool):
    """Append one JSON line per epoch; a resumed run first keeps only the checkpoint's epochs."""
    saved = path.parent / CHECKPOINT_NAME
    with _writing(path.parent):
        _rewrite_metrics(path, saved if resume and saved.exists() else None)

    def on_epoch(epoch, metrics):
        with path.open("a") as f:
            f.write(json.dumps({"epoch": epoch, **metrics}) + "\n")

    return on_epoch


@contextlib.contextmanager
def locked(out: Path) -> Iterator[Path]:
    """Hold the lock of `out` for the run: a second run into it stops at once, naming this one."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(checkpoint.lock_folder(out))
        except checkpoint.FolderLocked as error:
            raise UsageError(
                f"{out} is in use by another run ({error.holder or 'pid unknown'}); "
                "wait for it to end, or choose another --out"
            ) from None
        except OSError as error:
            raise UsageError(
                f"cannot write to output folder {out}: {error.strerror or error}"
            ) from None
        yield out


def prepare_out(args, config: dict) -> int:
    """Check `out` against what was asked, then write config.json; the epoch to resume from."""
    out: Path = args.out
    if (out / CHECKPOINT_NAME).exists() and not (args.resume or args.overwrite):
        raise UsageError(
            f"{out} already holds a run ({CHECKPOINT_NAME}); pass --resume to continue it, "
            "--overwrite to replace it, or another --out"
        )
    start = _resume_epoch(args, config) if args.resume else 0
    if start == args.epochs:  # finished: every file stays as it is
        return start
    with _writing(out):
        for name in (CHECKPOINT_NAME, "config.json", "metrics.jsonl"):  # a killed run's temps
            for tmp in out.glob(f".{name}.*.tmp"):
                tmp.unlink()
        checkpoint.atomic_write(
            out / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode())
        )
        if args.overwrite:  # every file a run writes (baselines.json: a character model's)
            for name in (CHECKPOINT_NAME, "metrics.jsonl", "plot.png", "baselines.json"):
                (out / name).unlink(missing_ok=True)
    return start


def _writing(out: Path):
    """Around writes into --out before training: one that fails is the user's folder's fault."""
    return bad_input(f"cannot write to output folder {out}", (OSError,))


def _resume_epoch(args, config: dict) -> int:
    """The epoch the checkpoint in `out` reached, once its run is known to match `config`."""
    out: Path = args.out
    require_run(out)
    with bad_input(f"--resume: the run in {out}", (ValueError, OSError)):  # a corrupt file
        changed = _differences(args, config, out / "config.json")
        epoch = int(checkpoint.load(out / CHECKPOINT_NAME)[1]["epoch"])
    if changed:
        raise UsageError(
            f"--resume with settings that differ from the run in {out}: {'; '.join(changed)}"
        )
    if epoch > args.epochs:
        raise UsageError(
            f"--epochs {args.epochs}: the run in {out} has already trained {epoch} epochs"
        )
    return epoch


def require_run(out: Path) -> None:
    """--resume needs a checkpoint to resume from."""
    if not (out / CHECKPOINT_NAME).is_file():
        raise UsageError(
            f"--resume: no run to resume in {out} (no {CHECKPOINT_NAME}); "
            "leave out --resume to start one"
        )


def _differences(args, config: dict, saved: Path) -> list[str]:
    """Each setting --resume may not change that `config` gives otherwise than `saved` holds."""
    before = json.loads(saved.read_text()) if saved.exists() else {}
    changed = []
    for name, value in config.items():
        if name in RESUMABLE or before.get(name, value) == value:  # absent: newer than the run
            continue
        if before[name] is None and getattr(args, name, None) is None:
            continue  # a config written before defaults were resolved holds null for them
        flag = "--" + name.replace("_", "-")
        changed.append(f"{flag}: run has {_shown(before[name])}, you gave {_shown(value)}")
    return changed


def _shown(value) -> str:
    """A setting as it is typed on the command line."""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    return "none" if value is None else str(value)


def _rewrite_metrics(path: Path, checkpoint_path) -> None:
    """metrics.jsonl restarts with the epochs the checkpoint kept, so lines match parameters."""
    lines = []
    if checkpoint_path:
        history = checkpoint.load(checkpoint_path)[1]["history"]
        for epoch in range(len(history["loss"])):
            lines.append(
                json.dumps(
                    {
                        "epoch": epoch + 1,
                        **{k: v[epoch] for k, v in history.items() if len(v) > epoch},
                    }
                )
            )
    checkpoint.atomic_write(
        path, lambda f: f.write("".join(line + "\n" for line in lines).encode())
    )
