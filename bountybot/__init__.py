"""bountybot: crowdfund the work you want on GitHub and GitLab issues, with public books."""

__version__ = "0.1.0"
