"""A repository as its forge knows it: what the forges' adapters, the storage and the workers
pass between them, and no part of any of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RepoRef:
    """A repository as the forge knows it: stable id, current path, and the installation
    (GitHub App) that gives access to it, if any."""

    forge: str
    forge_repo_id: str
    full_path: str
    installation_id: str | None = None
    # Whether the forge says the repo is private (None when the payload does not say): its
    # data then stays out of the public pages, API and export unless published.
    private: bool | None = None
