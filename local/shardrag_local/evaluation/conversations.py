"""``python -m shardrag_local.evaluation.conversations``: conversational retrieval on an MTRAG-style folder
(``conversations.jsonl`` with each turn's history, ``corpus.jsonl``, ``qrels/test.tsv``) through the real path.

The corpus is uploaded to the documents bucket of a fresh local runtime (S3 -> SQS -> ingest), then every turn
is asked through ``POST /chat`` three ways: the last turn alone (no history), the turn with its history (the
runtime's condenser rewrites it before retrieval), and MTRAG's human rewrite alone where there is one; in BM25 and
hybrid mode. The documents the ``retrieval`` event ranks are scored (nDCG@10, recall@5), per source; time to first
token and to ``done`` are measured with the extractive generator (the client's clock and the server's).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardrag.chat.records import MAX_TURN_CHARS

from shardrag_local.evaluation.dataset import BeirDocument
from shardrag_local.evaluation.latency import percentiles
from shardrag_local.evaluation.metrics import dedupe_ranking, ndcg_at_k, recall_at_k
from shardrag_local.evaluation.report import PROJECT_ROOT, stamp, update_benchmarks
from shardrag_local.evaluation.system import LocalSystem

FORMS = ("last", "condensed", "rewrite")
MODES = ("bm25", "hybrid")
#: Chunk hits asked per turn: enough distinct passages for nDCG@10 (a passage is one to three chunks).
TOP_K = 50


@dataclass(frozen=True)
class Turn:
    turn_id: str
    source: str
    question: str
    history: list[dict[str, str]]
    rewrite: str | None


@dataclass
class ChatObservation:
    ranking: list[str]
    retrieval_query: str
    method: str
    client_first_token_ms: float | None
    client_done_ms: float
    server_ttft_ms: float | None
    server_total_ms: float | None
    events: list[str] = field(default_factory=list)


def load(root: Path) -> tuple[list[BeirDocument], list[Turn], dict[str, dict[str, int]]]:
    corpus = [
        BeirDocument(doc_id=row["_id"], title=row.get("title") or "", text=row["text"], metadata={})
        for row in map(json.loads, (root / "corpus.jsonl").read_text().splitlines())
    ]
    turns = []
    for row in map(json.loads, (root / "conversations.jsonl").read_text().splitlines()):
        history = [
            {"role": "user" if t["role"] == "user" else "assistant", "text": t["text"][:MAX_TURN_CHARS]}
            for t in row["history"]
        ]
        turns.append(Turn(row["_id"], row["source"], row["question"], history, row.get("rewrite")))
    qrels: dict[str, dict[str, int]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, doc, score = line.split("\t")
        qrels.setdefault(query, {})[doc] = int(score)
    return corpus, turns, qrels


def chat(url: str, body: dict[str, Any], timeout_s: float = 120) -> ChatObservation:
    """One ``POST /chat``, read as a browser reads it: the clock starts before the request is sent."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    started = time.perf_counter()
    connection.request("POST", "/chat", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"POST /chat answered {response.status}: {response.read()[:300]!r}")
    name, data, events = "", "", []
    first_token: float | None = None
    retrieval: dict[str, Any] = {}
    done: dict[str, Any] = {}
    while raw := response.fp.readline():
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and name:
            events.append(name)
            if name == "token" and first_token is None:
                first_token = (time.perf_counter() - started) * 1000
            elif name == "retrieval":
                retrieval = json.loads(data)
            elif name == "done":
                done = json.loads(data)
            elif name == "error":
                raise RuntimeError(f"POST /chat streamed an error: {data[:300]}")
            name, data = "", ""
    connection.close()
    return ChatObservation(
        ranking=dedupe_ranking(str(h["doc_id"]) for h in retrieval.get("hits", [])),
        retrieval_query=str(retrieval.get("retrieval_query", "")),
        method=str((retrieval.get("condenser") or {}).get("method", "")),
        client_first_token_ms=first_token,
        client_done_ms=(time.perf_counter() - started) * 1000,
        server_ttft_ms=done.get("ttft_ms"),
        server_total_ms=done.get("total_ms"),
        events=events,
    )


def run(root: Path, *, shards: int, limit: int | None, progress: Any) -> dict[str, Any]:
    corpus, turns, qrels = load(root)
    turns = turns[:limit] if limit else turns
    scores: dict[str, dict[str, dict[str, dict[str, float]]]] = {m: {f: {} for f in FORMS} for m in MODES}
    queries: dict[str, dict[str, str]] = {}
    latency: dict[str, list[float]] = {"client_first_token": [], "client_done": [], "ttft": [], "total": []}
    with tempfile.TemporaryDirectory(prefix="shardrag-chat-eval-") as tmp, LocalSystem(shards=shards) as system:
        parts = []
        for n, start in enumerate(range(0, len(corpus), 250)):
            path = Path(tmp) / f"{root.name}-{n:04d}.jsonl"
            path.write_text("\n".join(d.jsonl_line() for d in corpus[start : start + 250]) + "\n", encoding="utf-8")
            parts.append(path)
        ingest = system.ingest(parts, progress=progress)
        for mode in MODES:
            for n, turn in enumerate(turns, start=1):
                bodies: dict[str, dict[str, Any] | None] = {
                    "last": {"question": turn.question, "history": []},
                    "condensed": {"question": turn.question, "history": turn.history},
                    "rewrite": {"question": turn.rewrite, "history": []} if turn.rewrite else None,
                }
                for form, body in bodies.items():
                    if body is None:
                        continue
                    seen = chat(system.url, {**body, "mode": mode, "top_k": TOP_K})
                    judged = qrels[turn.turn_id]
                    scores[mode][form][turn.turn_id] = {
                        "ndcg@10": ndcg_at_k(seen.ranking, judged, 10),
                        "recall@5": recall_at_k(seen.ranking, judged, 5),
                    }
                    if form == "condensed" and mode == MODES[0]:
                        queries[turn.turn_id] = {"query": seen.retrieval_query, "method": seen.method}
                    if form == "last":
                        latency["client_done"].append(seen.client_done_ms)
                        if seen.client_first_token_ms is not None:
                            latency["client_first_token"].append(seen.client_first_token_ms)
                        if seen.server_ttft_ms is not None:
                            latency["ttft"].append(float(seen.server_ttft_ms))
                        if seen.server_total_ms is not None:
                            latency["total"].append(float(seen.server_total_ms))
                if n % 50 == 0:
                    progress(f"{mode}: {n}/{len(turns)} turns")
    sources = sorted({t.source for t in turns})
    subsets = {"all": [t.turn_id for t in turns], "with rewrite": [t.turn_id for t in turns if t.rewrite]}
    subsets |= {s: [t.turn_id for t in turns if t.source == s] for s in sources}
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in MODES:
        for subset, ids in subsets.items():
            row: dict[str, Any] = {"n": len(ids)}
            for form in FORMS:
                got = [scores[mode][form][i] for i in ids if i in scores[mode][form]]
                row[form] = (
                    {k: round(sum(g[k] for g in got) / len(got), 4) for k in ("ndcg@10", "recall@5")} if got else None
                )
            table.setdefault(mode, {})[subset] = row
    return {
        "dataset": {"name": root.name, "path": str(root), "turns": len(turns), "passages": len(corpus)},
        "ingest": ingest.as_dict(),
        "results": table,
        "rewritten_by_condenser": sum(1 for q in queries.values() if q["method"] != "unchanged"),
        "latency_ms": {k: percentiles(v) for k, v in latency.items()},
        "queries": queries,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Command `{report['command']}` at commit `{report['commit']}` ({report['machine']['cpu']}, "
        f"{report['machine']['cores']} cores); {report['dataset']['turns']} turns, {report['dataset']['passages']} "
        f"passages ingested through S3 ({report['ingest']['chunks']} chunks); every turn asked through `POST /chat`. "
        f"The condenser rewrote {report['rewritten_by_condenser']} of {report['dataset']['turns']} turns.",
        "",
        "nDCG@10 / recall@5 (documents ranked by the `retrieval` event):",
        "",
    ]
    header = ["mode", "turns", "n", *[f"{f} nDCG@10 / R@5" for f in FORMS]]
    rows = []
    for mode, subsets in report["results"].items():
        for subset, row in subsets.items():
            cells = [f"{row[f]['ndcg@10']:.3f} / {row[f]['recall@5']:.3f}" if row[f] else "-" for f in FORMS]
            rows.append([mode, subset, str(row["n"]), *cells])
    lines += _table(header, rows)
    latency = report["latency_ms"]
    lines += [
        "",
        "Time to first token and to `done` with the extractive generator (last-turn requests, hybrid and bm25 "
        "together; client: from sending the request, server: from the request's arrival):",
        "",
    ]
    lat_rows = [
        [name, _p(latency[key], "p50"), _p(latency[key], "p95"), str(latency[key].get("n", 0))]
        for name, key in (
            ("first token (client)", "client_first_token"),
            ("first token (server ttft_ms)", "ttft"),
            ("done (client)", "client_done"),
            ("done (server total_ms)", "total"),
        )
    ]
    lines += _table(["measure", "p50 ms", "p95 ms", "n"], lat_rows)
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _p(values: dict[str, Any], key: str) -> str:
    return f"{values[key]:.1f}" if key in values else "-"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m shardrag_local.evaluation.conversations", description=__doc__)
    parser.add_argument("--dataset", type=Path, default=PROJECT_ROOT.parent / "shared" / "datasets" / "mtrag-mini")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--limit-turns", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--update-benchmarks", action="store_true")
    args = parser.parse_args(argv)
    report = stamp(
        run(args.dataset, shards=args.shards, limit=args.limit_turns, progress=lambda m: print(m, file=sys.stderr)),
        ("python -m shardrag_local.evaluation.conversations " + shlex.join(argv)).strip(),
    )
    out = args.out or PROJECT_ROOT / "bench" / "results" / f"eval-{report['dataset']['name']}-chat.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown = render(report)
    if args.update_benchmarks:
        update_benchmarks(markdown, f"{report['dataset']['name']}-chat")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
