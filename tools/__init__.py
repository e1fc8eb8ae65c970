"""Command-line tools around main.py: the demo, log plots, prediction drawings."""
