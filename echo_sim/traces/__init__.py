"""Acceptance traces: the format, its reader and replay, trace-info, importers."""
