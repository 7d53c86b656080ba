"""Experiment entry points (figures + JSON), one module per family."""
