"""Text embedding: the :class:`Embedder` interface and its onnxruntime implementation.

Importing this package does not import onnxruntime or tokenizers; :class:`OnnxEmbedder` loads them in
``warm_up()``.
"""

from __future__ import annotations

from shardrag.embedding.base import Embedder
from shardrag.embedding.onnx import OnnxEmbedder

__all__ = ["Embedder", "OnnxEmbedder"]
