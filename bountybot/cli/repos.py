"""`bountybot repos`: the repos known; `publish` and `unpublish` a private one's data."""

from __future__ import annotations

import argparse

from bountybot.cli.common import CommandError, _with_books, load_settings
from bountybot.logs import log_level, setup_logging


def cmd_repos(args: argparse.Namespace) -> int:
    from bountybot.operator.repos import HEADER, RepoError, list_repos, set_published

    settings = load_settings(args)
    setup_logging(settings, level=log_level())
    if args.repos_command in ("publish", "unpublish"):
        publish = args.repos_command == "publish"
        try:
            repo, changed = _with_books(settings, f"{args.repos_command} a repo",
                                        lambda sm: set_published(sm, args.forge, args.path,
                                                                 publish))
        except RepoError as e:
            raise CommandError(f"repos {args.repos_command}: {e}") from None
        name = f"{repo.forge} {repo.path}"
        if publish:
            print(f"{name}: its tasks, people and amounts are public now"
                  if changed else f"{name} is published already")
        elif not repo.private:
            print(f"{name} is a public repo: its data stays public")
        else:
            print(f"{name}: its data is off the public pages, badges, feeds and API now"
                  if changed else f"{name} is not published")
        return 0
    rows = _with_books(settings, "list repos", list_repos)
    if not rows:
        print("no repo is known yet")
        return 0
    print(HEADER)
    for row in rows:
        print(row.line())
    hidden = sum(1 for row in rows if not row.public)
    if hidden:
        print(f"\n{hidden} private repo(s) hidden from the public pages, badges, feeds and API:"
              " `bountybot repos publish FORGE PATH` shows one's data")
    return 0
