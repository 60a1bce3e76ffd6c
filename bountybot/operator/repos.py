"""The repos the bot knows, and whether a private one's data is public (`bountybot repos`).

A private repo (GitHub `private`, GitLab visibility not public, as the forge's payloads last said)
keeps its tasks, people and amounts out of every public read. Its operator may publish them for
its maintainers (`bountybot repos publish github octo/secret`), and take them back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bountybot.logs import event
from bountybot.storage import tables as t
from bountybot.storage.uow import UnitOfWork

log = logging.getLogger(__name__)


class RepoError(LookupError):
    """No such repo, or several by that name, or a publication that makes no sense."""


@dataclass(frozen=True)
class RepoLine:
    """A repo as `bountybot repos` lists it."""

    id: int
    forge: str
    path: str
    private: bool
    published: bool
    tasks: int

    @property
    def public(self) -> bool:
        return not self.private or self.published

    def line(self) -> str:
        shown = "public" if not self.private else "published" if self.published else "hidden"
        return (f"{self.id:>6}  {self.forge:<7} {'yes' if self.private else 'no':<8}"
                f"{'yes' if self.published else 'no':<10} {shown:<10} {self.tasks:>5}"
                f"  {self.path}")


HEADER = (f"{'id':>6}  {'forge':<7} {'private':<8}{'published':<10} {'public':<10}"
          f" {'tasks':>5}  path")


async def list_repos(sessionmaker: async_sessionmaker[AsyncSession]) -> list[RepoLine]:
    """Every repo, by forge and path, with its number of tasks."""
    async with sessionmaker() as session:
        tasks = (select(t.Task.repo_id, func.count().label("n")).group_by(col(t.Task.repo_id))
                 .subquery())
        stmt = (select(t.Repo, tasks.c.n).outerjoin(tasks, tasks.c.repo_id == col(t.Repo.id))
                .order_by(col(t.Repo.forge), func.lower(col(t.Repo.full_path)),
                          col(t.Repo.id)))
        return [RepoLine(t.id_of(r), r.forge, r.full_path, r.private, r.published, int(n or 0))
                for r, n in (await session.exec(stmt)).all()]


async def _find(session: AsyncSession, forge: str, name: str) -> t.Repo:
    """The repo named `name` on `forge`: its full path (any case), or its id from the list
    (a full path always has a `/`, so a bare number is never one)."""
    if name.isdigit():
        repo = await session.get(t.Repo, int(name)) if len(name) <= 9 else None
        if repo is None or repo.forge != forge:
            raise RepoError(f"no {forge} repo with id {name} (see `bountybot repos`)")
        return repo
    path = name.strip().strip("/")
    found = list((await session.exec(select(t.Repo).where(
        col(t.Repo.forge) == forge,
        func.lower(col(t.Repo.full_path)) == path.lower()))).all())
    if not found:
        raise RepoError(f"no {forge} repo {path!r} is known (see `bountybot repos`)")
    if len(found) > 1:  # a renamed repo whose old name was taken again
        ids = ", ".join(str(r.id) for r in found)
        raise RepoError(f"several {forge} repos are named {path!r} (ids {ids}): give the id")
    return found[0]


async def set_published(sessionmaker: async_sessionmaker[AsyncSession], forge: str, name: str,
                        published: bool) -> tuple[RepoLine, bool]:
    """Publish (or unpublish) a private repo's data; the repo as it is now, and whether this
    changed anything. Publishing a public repo is refused: it would mean nothing today, and
    would silently publish it the day it turns private."""
    async with UnitOfWork(sessionmaker) as uow:
        repo = await _find(uow.session, forge, name)
        if published and not repo.private:
            raise RepoError(f"{forge} {repo.full_path} is public: its data is public already;"
                            " publishing is for private repos")
        changed = repo.published != published
        if changed:
            repo.published = published
            uow.session.add(repo)
        tasks = (await uow.session.exec(select(func.count()).select_from(t.Task).where(
            col(t.Task.repo_id) == repo.id))).one()
        line = RepoLine(t.id_of(repo), repo.forge, repo.full_path, repo.private, published,
                        int(tasks))
    if changed:
        event(log, "repo.published" if published else "repo.unpublished", forge=forge,
              repo=line.path)
    return line, changed
