"""Layers shared by backbones and methods."""
