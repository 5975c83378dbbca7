"""The errors gitops-nodes raises; each message tells the user what to do next.

GitopsNodesError
├── SpecErrors            (spec/errors.py: every problem found in the repo, with positions)
├── RuntimeUnavailable    the container engine does not answer
├── RuntimeFailure        the engine refused or failed an operation
├── LockTimeout           another apply holds the state directory's lock
├── StalePlan             a saved plan no longer matches the spec or the live state
├── PlanFileError         a saved plan file cannot be read
├── ApplyCancelled        the plan apply showed on a terminal was not approved
└── SourceError           (watch/source.py) the repo cannot be fetched or read
"""

from __future__ import annotations


class GitopsNodesError(Exception):
    """Base of every error that gitops-nodes reports to its user."""


class RuntimeUnavailable(GitopsNodesError):
    """The container engine cannot be reached."""


class RuntimeFailure(GitopsNodesError):
    """The container engine failed an operation that apply asked for."""


class LockTimeout(GitopsNodesError):
    """Another process holds the apply lock for longer than we may wait."""


class StalePlan(GitopsNodesError):
    """A saved plan was made from a spec or live state that has since changed."""


class PlanFileError(GitopsNodesError):
    """A saved plan file is missing, unreadable or not a gitops-nodes plan."""


class ApplyCancelled(GitopsNodesError):
    """The plan shown by `apply` on a terminal was not approved with yes."""
