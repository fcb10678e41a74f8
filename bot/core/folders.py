"""Creating a folder the bot writes into, with the reason in words when it cannot be (the config's
data_dir, the CLI's --out, the database's and the lock file's folder all ask the same question)."""

from __future__ import annotations

from pathlib import Path


def make_folder(path: Path) -> str | None:
    """Create `path` (and its parents) if needed. None if it is a folder now; else why not, one line
    naming the path (the caller adds what the folder was for)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{path} exists and is not a folder"
    except NotADirectoryError:
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return f"cannot create {path}: {parent} is a file, not a folder"
    except OSError as e:
        return f"cannot create {path}: {e.strerror or e}"
    except ValueError:  # a NUL character: no OS takes it
        return f"{str(path)!r} is not a possible folder name"
    if not path.is_dir():
        return f"{path} exists and is not a folder"
    return None
