"""Query forms for follow-up turns on mtrag-mini, with the dataset README's own BM25 (bm25s, English stop words,
PyStemmer): last turn alone, history + question, the deterministic condenser, the human rewrite. A quick offline
check of the condenser's design; ``make eval`` measures it through the real path (``--conversations``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from shardrag.chat.condense import DeterministicCondenser
from shardrag.chat.records import HistoryTurn


def ndcg10(ranked: list[str], gold: set[str]) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(gold))))
    return dcg / ideal if ideal else 0.0


def main() -> None:
    import bm25s
    import Stemmer

    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="../shared/datasets/mtrag-mini")
    parser.add_argument("--max-terms", type=int, default=4)
    args = parser.parse_args()
    root = Path(args.dataset)
    corpus = [json.loads(line) for line in (root / "corpus.jsonl").open()]
    rows = [json.loads(line) for line in (root / "conversations.jsonl").open()]
    gold: dict[str, set[str]] = {}
    for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        gold.setdefault(qid, set()).add(did)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([f"{d['title']} {d['text']}" for d in corpus], stopwords="en", stemmer=stemmer))
    ids = [d["_id"] for d in corpus]
    condenser = DeterministicCondenser(max_terms=args.max_terms)

    def search(text: str) -> list[str]:
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False)
        docs, _ = retriever.retrieve(tokens, k=10, show_progress=False)
        return [ids[i] for i in docs[0]]

    forms = {"last": [], "hist+q": [], "condensed": [], "rewrite": []}
    changed = 0
    for row in rows:
        history = [
            HistoryTurn(role="user" if t["role"] == "user" else "assistant", text=t["text"]) for t in row["history"]
        ]
        users = " ".join(t["text"] for t in row["history"] if t["role"] == "user")
        condensed = condenser.run(row["question"], history)
        changed += condensed.method != "unchanged"
        g = gold[row["_id"]]
        forms["last"].append((row, ndcg10(search(row["question"]), g)))
        forms["hist+q"].append((row, ndcg10(search(f"{users} {row['question']}"), g)))
        forms["condensed"].append((row, ndcg10(search(condensed.query), g)))
        if row["rewrite"]:
            forms["rewrite"].append((row, ndcg10(search(row["rewrite"]), g)))
    print(f"condenser rewrote {changed} of {len(rows)} turns")
    for subset, keep in (
        ("all", lambda r: True),
        ("mtrag (rewrite)", lambda r: r["rewrite"] is not None),
        ("mtrag-un", lambda r: r["rewrite"] is None),
    ):
        line = [f"{subset:16}"]
        for name, scored in forms.items():
            values = [s for r, s in scored if keep(r)]
            line.append(f"{name} {sum(values) / len(values):.3f}" if values else f"{name} -")
        print("  ".join(line))


if __name__ == "__main__":
    main()
