"""The step-time model: roofline, presets, calibration files and their fit."""
