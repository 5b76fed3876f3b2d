"""Shared neural building blocks."""

from .mlp import MLP, Discriminator

__all__ = ["MLP", "Discriminator"]
