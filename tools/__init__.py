"""Command-line tools around main.py: the demo, plots, predictions, attention pictures, export, HF conversion."""
