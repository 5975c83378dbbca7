"""The corpus's repositories are data: nothing under cases/ is collected as a test."""

collect_ignore_glob = ["cases/*"]
