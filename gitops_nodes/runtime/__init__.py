"""Where instances run: the Runtime interface and its Docker implementation."""
