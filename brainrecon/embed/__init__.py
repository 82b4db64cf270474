"""Embedding spaces that brain activity is decoded into."""

from brainrecon.embed.handcrafted import LowLevelEmbedder

__all__ = ["LowLevelEmbedder"]
