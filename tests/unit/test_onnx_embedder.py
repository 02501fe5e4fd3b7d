"""OnnxEmbedder: batching, order, truncation, token counts, lazy thread-safe loading, configuration errors.

Runs the real exported model. The session fixture builds ``build/model`` when it is missing (a few seconds,
needs torch); CI runs ``make model`` first, so there it only checks the manifest.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shardrag.config import load_settings
from shardrag.embedding import Embedder, OnnxEmbedder
from shardrag.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "build" / "model"

MIXED = [
    "short",
    "a medium length sentence about sharded retrieval on AWS Lambda",
    "",
    "Milvus Lite keeps each shard in one file, " * 12,
    "tiny",
    "Step Functions runs one branch per shard and merges the hits exactly.",
    "x " * 300,  # longer than max_seq_length: truncated
]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The exported model, built on first use if ``make model`` has not run."""
    from shardrag_local.export_model import export

    export(MODEL_DIR)
    return MODEL_DIR


@pytest.fixture(scope="session")
def embedder(model_dir: Path) -> OnnxEmbedder:
    shared = OnnxEmbedder(model_dir, batch_size=32, threads=1)
    shared.warm_up()
    return shared


class RecordingSession:
    """Delegates to the real session and records the shape of every batch it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.shapes: list[tuple[int, int]] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.shapes.append(feeds["input_ids"].shape)
        return self.inner.run(outputs, feeds)


def _one_by_one(embedder: OnnxEmbedder, texts: list[str]) -> np.ndarray:
    return np.vstack([embedder.embed([t]) for t in texts])


def test_satisfies_the_embedder_protocol(embedder: OnnxEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dimension == 384


def test_returns_float32_unit_vectors_in_input_order(model_dir: Path, embedder: OnnxEmbedder) -> None:
    # GIVEN texts of very different lengths, split across several batches that are sorted by length
    small_batches = OnnxEmbedder(model_dir, batch_size=2, threads=1)

    # WHEN they are embedded together
    vectors = small_batches.embed(MIXED)

    # THEN row i is text i's embedding, as if it had been embedded alone (padding changes nothing)
    assert vectors.shape == (len(MIXED), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, _one_by_one(embedder, MIXED), atol=1e-5)
    # and distinct texts do get distinct vectors (a row-order bug could otherwise hide behind identical rows)
    assert len({tuple(np.round(v, 4)) for v in vectors}) == len(MIXED)


def test_batches_hold_at_most_batch_size_texts_longest_first(model_dir: Path) -> None:
    embedder = OnnxEmbedder(model_dir, batch_size=3, threads=1)
    embedder.warm_up()
    recorder = RecordingSession(embedder._session)
    embedder._session = recorder

    embedder.embed(MIXED)

    assert [rows for rows, _ in recorder.shapes] == [3, 3, 1]
    widths = [width for _, width in recorder.shapes]
    assert widths == sorted(widths, reverse=True)
    # Sorting groups the short texts together, so the last batches pad to a short length, not to 256.
    assert widths[0] == 256
    assert widths[-1] <= 4


def test_empty_input_gives_an_empty_matrix(embedder: OnnxEmbedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_a_bare_string_is_rejected(embedder: OnnxEmbedder) -> None:
    with pytest.raises(TypeError, match="not a single str"):
        embedder.embed("hello")


def test_count_tokens_includes_special_tokens_and_ignores_truncation(embedder: OnnxEmbedder) -> None:
    assert embedder.count_tokens("") == 2  # [CLS] [SEP]
    assert embedder.count_tokens("hello world") == 4
    assert embedder.count_tokens("x " * 300) == 302


def test_texts_are_truncated_at_max_seq_length(model_dir: Path, embedder: OnnxEmbedder) -> None:
    # GIVEN a text of 402 tokens and its first 254 word pieces (+ [CLS] and [SEP] = 256 tokens)
    words = [f"w{i % 7}" for i in range(400)]
    long_text = " ".join(words)
    assert embedder.count_tokens(long_text) > 256
    prefix = long_text
    while embedder.count_tokens(prefix) > 256:
        prefix = prefix.rsplit(" ", 1)[0]

    # THEN the model sees only the first 256 tokens of the long text
    np.testing.assert_allclose(embedder.embed([long_text]), embedder.embed([prefix]), atol=1e-5)
    # and a shorter max_seq_length really cuts earlier
    short = OnnxEmbedder(model_dir, max_seq_length=64, threads=1)
    assert float(short.embed([long_text])[0] @ embedder.embed([long_text])[0]) < 0.9999


def test_the_shipped_fixed_128_padding_tokenizer_is_overridden(
    tmp_path: Path, model_dir: Path, embedder: OnnxEmbedder
) -> None:
    # GIVEN the model next to the tokenizer.json as the package ships it (truncate at 128, pad to 128)
    from shardrag_local.export_model import source_model_dir

    (tmp_path / "model.onnx").symlink_to(model_dir / "model.onnx")
    shutil.copy(source_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    text = "Shards are searched in parallel and merged by score. " * 15  # ~170 tokens
    assert 128 < embedder.count_tokens(text) < 256

    # WHEN it embeds a 128..256-token text THEN the runtime settings win over the file's
    shipped = OnnxEmbedder(tmp_path, threads=1)
    np.testing.assert_allclose(shipped.embed([text, "hi"]), embedder.embed([text, "hi"]), atol=1e-5)


def test_loading_is_lazy_and_happens_once_across_threads(
    model_dir: Path, embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    created: list[object] = []
    real = onnxruntime.InferenceSession

    def counting(*args: Any, **kwargs: Any) -> Any:
        created.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counting)
    fresh = OnnxEmbedder(model_dir, threads=1)
    assert created == []  # constructing loads nothing

    # WHEN eight threads embed at once on a cold instance
    start = threading.Barrier(8)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait()
            results.append(fresh.embed(MIXED[:3]))
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # THEN one session was created and every thread got the same, correct answer
    assert errors == []
    assert len(created) == 1
    expected = embedder.embed(MIXED[:3])
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_missing_model_says_to_run_make_model(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(tmp_path / "nowhere")  # construction stays cheap and succeeds
    with pytest.raises(ConfigurationError, match="make model") as raised:
        embedder.embed(["hello"])
    assert "model.onnx" in raised.value.message


def test_a_corrupt_model_file_is_a_configuration_error(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
    shutil.copy(model_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ConfigurationError, match="make model"):
        OnnxEmbedder(tmp_path).warm_up()


@pytest.mark.parametrize(
    "kwargs", [{"batch_size": 0}, {"threads": -1}, {"max_seq_length": 1}], ids=["batch", "threads", "seq"]
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        OnnxEmbedder("build/model", **kwargs)


def test_from_settings_applies_the_model_dir_override(tmp_path: Path) -> None:
    settings = load_settings(
        {"SHARDRAG_MODEL_DIR": str(tmp_path), "SHARDRAG_SETTINGS": '{"embedding": {"batch_size": 7}}'}
    )
    embedder = OnnxEmbedder.from_settings(settings.embedding)
    assert embedder.model_dir == tmp_path
    assert embedder.batch_size == 7
    assert embedder.max_seq_length == 256


def test_runtime_imports_neither_torch_nor_transformers(model_dir: Path) -> None:
    # Lambda packages ship without torch: importing or running the embedder must not need it.
    code = (
        "import sys\n"
        "import shardrag.embedding as e\n"
        "assert 'onnxruntime' not in sys.modules, 'package import loaded onnxruntime'\n"
        f"e.OnnxEmbedder({str(model_dir)!r}, threads=1).embed(['hello'])\n"
        "heavy = sorted({'torch', 'transformers', 'sentence_transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


_PIECES = st.sampled_from(
    ["tides", "Moon's", "café", "naïve", "東京", "x" * 300, "9.81", "—", "(pull)", "ﬁne", "Ⅻ", "\u0301e", "a\u00a0b"]
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_PIECES, st.sampled_from([" ", "  ", "\n", "\n\n", "\t", "", " \u3000 "])), min_size=1))
def test_token_spans_of_a_long_text_cut_at_spaces_equal_those_of_one_encoding(
    embedder: OnnxEmbedder, words: list[tuple[str, str]]
) -> None:
    # Long texts are tokenised in pieces cut at spaces (faster): every span must be what one encoding gives.
    unit = "".join(w + sep for w, sep in words)
    text = (unit * (20_000 // len(unit) + 2))[:30_000]
    embedder.warm_up()
    assert embedder._counter is not None
    whole = [(int(a), int(b)) for a, b in embedder._counter.encode(text, add_special_tokens=False).offsets]
    assert embedder.token_spans(text) == whole


def test_a_long_run_without_spaces_is_never_cut() -> None:
    from shardrag.embedding.onnx import _space_cuts

    text = "a " * 10 + "b" * 20_000 + " c" * 10
    cuts = _space_cuts(text, 8192)
    assert cuts[0] == 0 and all(text[at] == " " for at in cuts[1:])
    assert not any(20 < at < 20_020 for at in cuts)  # the run of b's stays whole
