"""Errors a user can fix: the configuration error every module raises, the others a step can meet
(`FixableError`: stored files that are damaged, a full disk), and one message without a
traceback for them or for a missing model or dataset.

`ConfigError` and `FixableError` need no imports, so any module can raise them. A bad profile
value, damaged stored files, a full disk, or a model or dataset that is neither on the hub nor
in a local mirror is the user's to fix, not a bug: `user_errors` (and `fixable`, in the steps
that load no resource) stops a step with one message naming the key, the file or the resource
(and, for a missing resource, where docs/cluster.md says how to mirror it), instead of
Metaflow's internal-error traceback.
"""
from __future__ import annotations

import contextlib

MIRRORS = "docs/cluster.md, sections 3 (Hugging Face access) and 4 (Local mirrors of the model and the Pile)"
"""Where docs/cluster.md says how to reach the hub or mirror a model or dataset."""


class ConfigError(ValueError):
    """A profile that cannot run; the message names the key and what is allowed."""


class FixableError(RuntimeError):
    """A step that cannot go on for a reason outside the code (stored files that are damaged, a full
    disk); the message names the file or the path and says what to do."""


class DiskFull(FixableError):
    """A write that found its disk full (ENOSPC) or its quota spent (EDQUOT)."""


def missing_resource(err: BaseException) -> bool:
    """Whether `err` says a hub model or dataset, or a local mirror of one, could not be found."""
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    known = {"RepositoryNotFoundError", "LocalEntryNotFoundError", "EntryNotFoundError", "RevisionNotFoundError",
             "GatedRepoError", "OfflineModeIsEnabled", "DatasetNotFoundError", "FileNotFoundError"}
    text = str(err)
    return bool(names & known) or (isinstance(err, OSError) and (
        any(m in text for m in ("is not a valid model identifier", "not a local folder", "does not appear to have",
                                 "couldn't connect to", "Repo id must be in the form"))))


@contextlib.contextmanager
def user_errors(profile: str, resource: str = ""):
    """Inside the block, a ConfigError, a FixableError or a missing `resource` (e.g. "model
    EleutherAI/pythia-1.4b") becomes a MetaflowException: one message, no traceback."""
    from metaflow.exception import MetaflowException

    try:
        yield
    except (ConfigError, FixableError) as err:
        raise one_line(profile, err) from None
    except Exception as err:
        if not missing_resource(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MetaflowException(f"{resource or 'a model or dataset'} could not be loaded ({type(err).__name__}: "
                                f"{first}). Check the name and revision in {profile}; offline or behind a firewall, "
                                f"point the profile at a local mirror: see {MIRRORS}.") from None


@contextlib.contextmanager
def fixable(profile: str):
    """Inside the block, a ConfigError or a FixableError becomes a MetaflowException: one message, no
    traceback. Every other error keeps its traceback (a missing file there is a bug, not a mirror)."""
    try:
        yield
    except (ConfigError, FixableError) as err:
        raise one_line(profile, err) from None


def one_line(profile: str, err: Exception):
    """The MetaflowException that shows `err` as one message: a ConfigError after the profile it is in."""
    from metaflow.exception import MetaflowException

    return MetaflowException(f"{profile}: {err}" if isinstance(err, ConfigError) else str(err))
