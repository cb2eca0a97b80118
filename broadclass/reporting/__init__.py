"""Markdown tables and figures: the one writer of every report, card, summary and comparison.

The bottom of the package: it imports nothing of broadclass, so every layer (data's set summaries too) can
use it. ``figures`` imports matplotlib, so it is imported only where a figure is drawn.
"""
