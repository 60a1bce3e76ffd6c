"""`python -m bountybot` runs the command line."""

from bountybot.cli import main

raise SystemExit(main())
