"""Forge adapters: the only modules that speak GitHub's or GitLab's language."""
