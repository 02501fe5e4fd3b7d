"""The evaluation harness's parts other than the metrics: BEIR loading, baselines, the sharding check, latency
summaries and the BENCHMARKS.md block. Fakes only (the hashing embedder); no runtime, no model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shardrag.workflow import IDS_ONLY_MAX_HITS
from shardrag_local.evaluation.baselines import Bm25Retriever, ExactDenseRetriever, _top_k
from shardrag_local.evaluation.consistency import ChunkMatrix, compare_with_brute_force
from shardrag_local.evaluation.dataset import BeirDataset, BeirDocument
from shardrag_local.evaluation.latency import percentiles, summarize
from shardrag_local.evaluation.metrics import MetricSummary
from shardrag_local.evaluation.report import render_markdown, update_benchmarks
from shardrag_local.evaluation.runner import (
    BM25,
    EXACT,
    MODES,
    EvalOptions,
    add_shard_comparison,
    api_top_k,
    comparison_command,
    parse_modes,
    ratios,
    system_name,
    targets,
)
from shardrag_local.evaluation.system import QueryObservation
from shardrag_local.evaluation.targets import BESIDE_DATASET, DatasetTargets, find_targets, packaged_path


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "d1", "title": "Honeybees", "text": "Bees dance to tell where flowers are."},
        {"_id": "d2", "title": "Tides", "text": "The moon pulls the oceans and makes tides."},
        {"_id": "d3", "title": "Volcanoes", "text": "Magma rises through the crust and erupts."},
    ]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n\n")
    queries = [{"_id": "q1", "text": "why do bees dance"}, {"_id": "q2", "text": "what makes tides"}]
    queries.append({"_id": "q-unjudged", "text": "never judged"})
    (root / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n")
    return root


def test_beir_loader_keeps_judged_queries_and_splits_the_corpus(tmp_path: Path) -> None:
    dataset = BeirDataset.load(_beir(tmp_path / "mini"))
    assert [d.doc_id for d in dataset.corpus] == ["d1", "d2", "d3"]
    assert dataset.queries == {"q1": "why do bees dance", "q2": "what makes tides"}
    assert dataset.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert set(dataset.checksums) == {"corpus.jsonl", "queries.jsonl", "qrels/test.tsv"}
    parts = dataset.write_jsonl_parts(tmp_path / "parts", docs_per_file=2)
    assert [p.name for p in parts] == ["mini-0000.jsonl", "mini-0001.jsonl"]
    first = [json.loads(line) for line in parts[0].read_text().splitlines()]
    assert first[0] == {
        "_id": "d1",
        "title": "Honeybees",
        "text": "Bees dance to tell where flowers are.",
        "metadata": {},
    }
    limited = BeirDataset.load(tmp_path / "mini", limit_queries=1)
    assert list(limited.queries) == ["q1"] and list(limited.qrels) == ["q1"]


def test_beir_loader_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"corpus\.jsonl"):
        BeirDataset.load(tmp_path)


def test_whole_text_is_title_space_text() -> None:
    assert BeirDocument("d", "Title", "Body.").whole_text == "Title Body."
    assert BeirDocument("d", "", "Body.").whole_text == "Body."


def test_top_k_breaks_ties_by_id_descending_even_across_the_cut() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1], dtype=np.float32)
    assert _top_k(scores, ["a", "b", "c", "d", "e"], 2) == ["b", "d"]
    assert _top_k(scores, ["a", "b", "c", "d", "e"], 10) == ["b", "d", "c", "a", "e"]


def test_exact_dense_baseline_ranks_by_cosine(tmp_path: Path, hashing_embedder: object) -> None:
    dataset = BeirDataset.load(_beir(tmp_path / "mini"))
    retriever = ExactDenseRetriever(hashing_embedder)  # type: ignore[arg-type]
    retriever.index(dataset.corpus)
    run = retriever.search({"q": "moon oceans tides"}, 2)
    assert run["q"][0] == "d2" and len(run["q"]) == 2


def test_bm25_baseline_finds_the_matching_document(tmp_path: Path) -> None:
    dataset = BeirDataset.load(_beir(tmp_path / "mini"))
    retriever = Bm25Retriever()
    retriever.index(dataset.corpus)
    run = retriever.search({"q1": "bees dancing", "q2": "magma erupts"}, 3)
    assert run["q1"][0] == "d1" and run["q2"][0] == "d3"
    assert "bm25s" in retriever.description


def _chunks() -> ChunkMatrix:
    vectors = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0.6, 0.8], [0, 1]], dtype=np.float32)
    return ChunkMatrix(["c0", "c1", "c2", "c3", "c4"], vectors)


def test_sharding_check_accepts_identical_and_tied_rankings_and_flags_the_rest() -> None:
    query = {"q": np.array([1, 0], dtype=np.float32)}
    # Brute force for q: c0 (1.0), c1 (0.8), then c2 and c3 tie at 0.6 -> the fuser's order puts c2 first.
    assert compare_with_brute_force({"q": ["c0", "c1", "c2"]}, query, _chunks(), k=3).identical_order == 1
    tied = compare_with_brute_force({"q": ["c0", "c1", "c3"]}, query, _chunks(), k=3)
    assert tied.passed and tied.differ_only_by_ties == 1 and tied.mean_overlap == pytest.approx(2 / 3)
    wrong = compare_with_brute_force({"q": ["c0", "c4", "c1"]}, query, _chunks(), k=3)
    assert not wrong.passed and wrong.mismatches == ["q"]
    swapped = compare_with_brute_force({"q": ["c1", "c0", "c2"]}, query, _chunks(), k=3)
    assert not swapped.passed and swapped.mean_overlap == 1.0


def test_percentiles_interpolate_linearly() -> None:
    stats = percentiles([1.0, 2.0, 3.0, 4.0])
    assert stats["p50"] == 2.5 and stats["p95"] == pytest.approx(3.85) and stats["n"] == 4
    assert percentiles([]) == {}


def test_summarize_reports_stages_shards_and_overhead() -> None:
    observations = [
        QueryObservation(
            "q",
            [],
            [],
            client_ms=50.0 + i,
            timings_ms={"embed": 4, "route": 0, "search": 10, "fuse": 1, "total": 40},
            shard_ms={"0": 10.0, "1": 8.0},
        )
        for i in range(3)
    ]
    summary = summarize(observations)
    assert summary["embed"]["p50"] == 4 and summary["end_to_end_client"]["p50"] == 51
    assert summary["overhead"]["p50"] == 36  # 51 - (4 + 0 + 10 + 1)
    assert list(summary["per_shard_search"]) == ["0", "1"]


def test_benchmarks_block_is_appended_once_then_replaced(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written\n")
    update_benchmarks("| old |\n", "scifact", path)
    update_benchmarks("| new |\n", "scifact", path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written\n")
    assert text.count("eval:scifact:begin") == 1 and "| new |" in text and "| old |" not in text


def test_sizing_projection_counts_invocations_and_nodes() -> None:
    from shardrag_local.evaluation.sizing import Scenario, project

    measured = {s: {"p50": 1.0, "p95": 2.0} for s in ("embed", "route", "fuse")}
    small = project(measured, Scenario(1_000_000, 10, 4, "r6i.xlarge"))
    busy = project(measured, Scenario(1_000_000, 100, 4, "r6i.xlarge"))
    large = project(measured, Scenario(100_000_000, 10, 8, "r6i.2xlarge"))
    assert small["milvus_nodes"].startswith("1 x") and large["milvus_nodes"].startswith("6 x")
    # Serverless cost scales with traffic, the cluster does not.
    assert busy["monthly_usd"]["lambda"] == pytest.approx(10 * small["monthly_usd"]["lambda"], rel=0.01)
    assert busy["monthly_usd"]["milvus"] == small["monthly_usd"]["milvus"]
    # API Gateway REST at $3.50 per million: 25.92 M queries -> $91.
    assert small["monthly_usd"]["api_gateway"] == 91


def _summary(ndcg: float) -> MetricSummary:
    return MetricSummary(
        ndcg_at_10=ndcg, mrr_at_10=0.6, recall={10: 0.8, 100: 0.9}, queries=3, skipped_queries=0, mean_depth=100.0
    )


def test_api_top_k_stays_within_the_ids_only_payload_bound() -> None:
    # GIVEN the payload rule (IDS_ONLY_MAX_HITS over shards x lists, hybrid returns two lists per shard)
    # THEN 200 where the bound allows it, and the bound beyond
    assert {api_top_k(mode, shards) for mode in MODES for shards in (1, 2)} == {200}
    assert api_top_k("dense", 4) == api_top_k("bm25", 4) == 200
    assert api_top_k("hybrid", 4) == IDS_ONLY_MAX_HITS // 8 == 157
    assert api_top_k("hybrid", 8) == 78 and api_top_k("dense", 8) == 157 and api_top_k("bm25", 16) == 78
    for mode in MODES:
        for shards in range(1, 33):
            lists = 2 if mode == "hybrid" else 1
            assert api_top_k(mode, shards) * shards * lists <= IDS_ONLY_MAX_HITS


def test_modes_parse_in_order_once_and_refuse_unknown_names() -> None:
    assert MODES == ("dense", "bm25", "hybrid")
    assert parse_modes("hybrid, dense,hybrid") == ("hybrid", "dense")
    with pytest.raises(ValueError, match="subset"):
        parse_modes("dense,splade")
    with pytest.raises(ValueError):
        parse_modes(" , ")


def test_cli_takes_modes_and_a_shard_comparison() -> None:
    import argparse

    from shardrag_local.evaluation.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--modes", "bm25,hybrid", "--compare-shards", "1"])
    assert args.modes == ("bm25", "hybrid") and args.compare_shards == 1
    assert parser.parse_args([]).modes is None  # all modes (runner.MODES)
    with pytest.raises(SystemExit):
        parser.parse_args(["--modes", "sparse"])


def test_targets_hold_bm25_to_the_baseline_of_the_same_run() -> None:
    systems = {
        system_name("dense"): _summary(0.681),
        system_name("bm25"): _summary(0.680),
        system_name("hybrid"): _summary(0.730),
        BM25: _summary(0.686),
    }
    out = targets(systems, DatasetTargets(ndcg_at_10={"dense": 0.68, "hybrid": 0.735}))
    dense = out["shardrag_api_dense ndcg@10 >= 0.68"]
    bm25 = out["shardrag_api_bm25 ndcg@10 >= bm25s ndcg@10 - 0.005"]
    hybrid = out["shardrag_api_hybrid ndcg@10 >= 0.735"]
    assert dense["met"] and bm25["threshold"] == 0.681 and not bm25["met"] and not hybrid["met"]
    # Without the baseline there is nothing to hold bm25 to.
    assert not any("bm25" in label for label in targets({system_name("bm25"): _summary(0.7)}))
    # A dataset without targets is held to no absolute figure (never another corpus's).
    assert list(targets(systems)) == ["shardrag_api_bm25 ndcg@10 >= bm25s ndcg@10 - 0.005"]


def test_targets_come_from_the_flag_then_beside_the_dataset_then_the_project(tmp_path: Path) -> None:
    root = _beir(tmp_path / "mini")
    assert find_targets(root, "mini", "test") == (DatasetTargets(), "")
    beside = root / BESIDE_DATASET
    beside.write_text(json.dumps({"ndcg@10": {"hybrid": 0.5}, "source": "beside"}))
    flag = tmp_path / "flag.json"
    flag.write_text(json.dumps({"ndcg@10": {"dense": 0.4}, "bm25_margin": 0.01}))
    assert find_targets(root, "mini", "test")[0].ndcg_at_10 == {"hybrid": 0.5}
    table, origin = find_targets(root, "mini", "test", flag)
    assert table.ndcg_at_10 == {"dense": 0.4} and table.bm25_margin == 0.01 and origin == str(flag)
    flag.write_text(json.dumps({"ndcg@10": {"sparse": 0.4}}))
    with pytest.raises(SystemExit, match=r"flag\.json"):
        find_targets(root, "mini", "test", flag)


def test_each_development_corpus_has_its_own_targets() -> None:
    scifact = find_targets(Path("/nonexistent"), "scifact", "test")[0]
    nfcorpus = find_targets(Path("/nonexistent"), "nfcorpus-dev", "dev")[0]
    assert scifact.ndcg_at_10["hybrid"] == 0.737 and nfcorpus.ndcg_at_10["hybrid"] == 0.341
    # NFCorpus test queries are held out: no targets were derived for them.
    assert not packaged_path("nfcorpus", "test").exists() and not packaged_path("nfcorpus-dev", "test").exists()


def test_a_conversational_folder_is_read_with_each_turns_question(tmp_path: Path) -> None:
    root = _beir(tmp_path / "chat")
    (root / "queries.jsonl").unlink()
    turns = [
        {"_id": "q1", "history": [{"role": "user", "text": "bees?"}], "question": "why do they dance", "rewrite": None},
        {"_id": "q2", "history": [], "question": "and tides", "rewrite": "what makes tides"},
    ]
    (root / "conversations.jsonl").write_text("\n".join(json.dumps(t) for t in turns) + "\n")
    dataset = BeirDataset.load(root)
    assert dataset.queries == {"q1": "why do they dance", "q2": "and tides"}
    assert "conversations.jsonl" in dataset.checksums


def test_ratios_pair_every_api_mode_with_every_baseline() -> None:
    systems = {system_name(m): _summary(0.7) for m in MODES} | {EXACT: _summary(0.7), BM25: _summary(0.35)}
    out = ratios(systems)
    assert len(out) == 6
    assert out["shardrag_api_hybrid/bm25s"]["ndcg@10"] == 2.0 and out["shardrag_api_dense/exact_dense_whole_docs"][
        "recall@100"
    ] == pytest.approx(1.0)


def _report() -> dict[str, object]:
    systems = {system_name(m): _summary(0.7) for m in MODES} | {BM25: _summary(0.686)}
    latency = {
        system_name(m): summarize(
            [QueryObservation("q", [], [], 50.0, {"embed": 4, "search": 10, "total": 40}, {"0": 10.0, "1": 9.0})]
        )
        for m in MODES
    }
    return {
        "command": "python -m shardrag_local.evaluation",
        "commit": "abc1234",
        "at": "2026-01-01T00:00:00+00:00",
        "machine": {
            k: "x" for k in ("cpu", "cores", "memory", "python", "onnxruntime", "pymilvus", "milvus-lite", "bm25s")
        },
        "dataset": {"name": "mini", "split": "test", "documents": 3, "queries": 1, "judgments": 1},
        "settings": {"shards": 4},
        "systems": {name: {"description": "d", **s.as_dict()} for name, s in systems.items()},
        "ratios": ratios(systems),
        "targets": targets(systems),
        "latency_ms": latency,
        "load_average_1min": {name: {"before_queries": 1.0, "after_queries": 2.0} for name in latency},
    }


def test_shard_comparison_states_both_figures_and_the_parity_target() -> None:
    report = _report()
    other = {
        "settings": {"shards": 1},
        "systems": {system_name("hybrid"): {"ndcg@10": 0.7025, "recall@10": 0.8, "recall@100": 0.9, "mrr@10": 0.6}},
    }
    add_shard_comparison(report, other, "bench/results/eval-mini-shards1.json")
    comparison = report["shard_comparison"]
    assert comparison["runs"] == [{"shards": 4, "ndcg@10": 0.7}, {"shards": 1, "ndcg@10": 0.7025}]  # type: ignore[index]
    target = report["targets"]["shardrag_api_hybrid ndcg@10: |4 shards - 1 shard(s)| <= 0.003"]  # type: ignore[index]
    assert target == {"value": 0.0025, "threshold": 0.003, "met": True}
    markdown = render_markdown(report)
    assert "0.7000 on 4 shards, 0.7025 on 1 shard;" in markdown


def test_markdown_has_a_row_per_system_and_a_latency_column_per_mode() -> None:
    markdown = render_markdown(_report())
    for mode in MODES:
        assert f"| **shardrag_api_{mode}** — d |" in markdown
        assert f"| shardrag_api_{mode}/bm25s |" in markdown
    assert "| stage | shardrag_api_dense | shardrag_api_bm25 | shardrag_api_hybrid |" in markdown
    assert "| **end to end (client)** | 50.0 / 50.0 | 50.0 / 50.0 | 50.0 / 50.0 |" in markdown
    assert "| shard 1 search | 9.0 / 9.0 |" in markdown
    assert "(threshold 0.681) — **met**" in markdown


def test_shard_comparison_reruns_the_cli_hybrid_only(tmp_path: Path) -> None:
    options = EvalOptions(
        dataset=tmp_path / "mini", limit_queries=20, max_top_k=100, settings={"ingestion": {"chunk_size": 96}}
    )
    command = comparison_command(options, 1, tmp_path / "out.json")
    assert command[1:3] == ["-m", "shardrag_local.evaluation"]
    joined = " ".join(command)
    for part in (
        "--shards 1",
        "--modes hybrid",
        "--no-baselines",
        "--no-sharding-check",
        "--limit-queries 20",
        "--max-top-k 100",
    ):
        assert part in joined
    assert json.loads(command[command.index("--settings") + 1]) == {"ingestion": {"chunk_size": 96}}


def test_sizing_reads_the_hybrid_latency_of_a_per_mode_report() -> None:
    from shardrag_local.evaluation.sizing import measured_latency

    per_mode = {"latency_ms": {"shardrag_api_dense": {"embed": 1}, "shardrag_api_hybrid": {"embed": 2}}}
    assert measured_latency(per_mode) == {"embed": 2}
    assert measured_latency({"latency_ms": {"end_to_end_client": {}, "embed": 3}})["embed"] == 3
