"""The public JSON API (`/api/v1/...`): tasks, a task's ledger, and the whole books for leaving.

`routes` holds the aiohttp handlers and `setup(app)`; `views` the JSON shapes and the batched
queries behind them, free of aiohttp, which `bountybot.export` (and so the CLI) shares. Nothing
is imported here, so that importing `views` does not pull in the web application.
"""
