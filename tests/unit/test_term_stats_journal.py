"""The term-statistics journal: a delta a flush could not apply outlives the worker that holds it, and lands in
the table exactly once however many copies of it (the worker's memory, the journal, several folding processes)
try to apply it.

The model test drives random sequences of writes, artefact-store failures, worker deaths and folds, and checks
that once the faults stop and any later flush has run, every table is the plain sum of every delta recorded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from shardrag.artifacts import FileArtifactStore
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.term_stats import (
    APPLIED_KEEP_S,
    JournalEntry,
    TermStatsStore,
    TermStatsTracker,
    decode_stats,
    encode_stats,
)

TEXTS = ["Tides rise twice a day.", "Bees dance to show the way.", "Basalt cools into columns.", "Herons fish."]


class MemoryJournal:
    """A journal as the registry table behaves for it: entries survive every worker."""

    def __init__(self) -> None:
        self.items: dict[str, JournalEntry] = {}
        self.fail = False

    def put(self, entry: JournalEntry) -> None:
        if self.fail:
            raise OSError("injected: journal write")
        self.items[entry.entry_id] = entry

    def entries(self) -> list[JournalEntry]:
        return list(self.items.values())

    def remove(self, entry_id: str) -> None:
        self.items.pop(entry_id, None)


class FlakyArtifacts(FileArtifactStore):
    fail = False

    def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
        if self.fail:
            raise OSError("injected: artefact write")
        return super().put(name, data, expected_etag=expected_etag)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _delta(text: str) -> CorpusStats:
    delta = CorpusStats()
    delta.count([Bm25Encoder().document(text)], +1)
    return delta


def test_a_journaled_delta_lands_once_though_the_worker_and_another_process_both_apply_it(tmp_path: Path) -> None:
    artifacts = FlakyArtifacts(tmp_path)
    table = TermStatsStore(artifacts, ["s0"])
    journal = MemoryJournal()
    worker = TermStatsTracker(lambda: table, lambda: journal)
    worker.record(0, added=[Bm25Encoder().document(TEXTS[0])], removed=[])
    artifacts.fail = True
    with pytest.raises(RuntimeError, match="OSError"):
        worker.flush(0)
    [entry] = journal.entries()
    assert entry.delta == _delta(TEXTS[0]) and table.load(0) == CorpusStats()
    artifacts.fail = False
    # Another process folds the entry; the worker, still alive, applies its own copy at its next flush.
    assert TermStatsTracker(lambda: table, lambda: journal).fold() == 1
    journal.items[entry.entry_id] = entry  # and even a copy whose removal was lost is applied only once
    worker.flush(0)
    TermStatsTracker(lambda: table, lambda: journal).fold()
    assert table.load(0) == _delta(TEXTS[0])
    assert journal.entries() == []


def test_without_a_journal_write_the_delta_still_waits_in_memory(tmp_path: Path) -> None:
    artifacts = FlakyArtifacts(tmp_path)
    table = TermStatsStore(artifacts, ["s0"])
    journal = MemoryJournal()
    tracker = TermStatsTracker(lambda: table, lambda: journal)
    tracker.record(0, added=[Bm25Encoder().document(TEXTS[1])], removed=[])
    artifacts.fail = journal.fail = True
    with pytest.raises(RuntimeError):
        tracker.flush(0)
    artifacts.fail = journal.fail = False
    tracker.flush(0)
    assert table.load(0) == _delta(TEXTS[1]) and journal.entries() == []


def test_an_entry_older_than_the_tables_memory_of_ids_is_dropped_unapplied_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = TermStatsStore(FileArtifactStore(tmp_path), ["s0"])
    journal = MemoryJournal()
    journal.put(JournalEntry("old", 0, "", _delta(TEXTS[2]), written_at=0.0))
    with caplog.at_level(logging.ERROR):
        assert TermStatsTracker(lambda: table, lambda: journal).fold() == 1
    assert table.load(0) == CorpusStats() and journal.entries() == []
    assert "rebuild-term-stats" in caplog.text


def test_the_table_forgets_applied_ids_after_the_keep_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shardrag.term_stats as module

    table = TermStatsStore(FileArtifactStore(tmp_path), ["s0"])
    now = [1_000_000.0]
    monkeypatch.setattr(module.time, "time", lambda: now[0])
    assert table.apply(0, _delta(TEXTS[0]), entry_id="a")
    assert table.apply(0, _delta(TEXTS[0]), entry_id="a")  # a second copy: nothing added
    assert table.load(0) == _delta(TEXTS[0])
    now[0] += APPLIED_KEEP_S + 1
    assert table.apply(0, _delta(TEXTS[1]), entry_id="b")
    found = table._artifacts.get("s0")
    assert found is not None
    _, applied = module._decode_table(found.data)
    assert set(applied) == {"b"}


def test_a_write_that_landed_but_read_as_a_lost_race_is_not_added_again(tmp_path: Path) -> None:
    """An S3 conditional PUT whose response was lost: the SDK retries it, the retry fails its precondition
    (the first one changed the ETag), and the table already holds the delta when the swap tries again."""

    class LostResponse(FileArtifactStore):
        lost = 1

        def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
            landed = super().put(name, data, expected_etag=expected_etag)
            if landed and LostResponse.lost:
                LostResponse.lost -= 1
                return False
            return landed

    table = TermStatsStore(LostResponse(tmp_path), ["s0"])
    assert table.apply(0, _delta(TEXTS[0]))
    assert table.load(0) == _delta(TEXTS[0])
    for _ in range(80):  # plain write ids are kept only for the newest few
        table.apply(0, CorpusStats())
    found = table._artifacts.get("s0")
    assert found is not None
    import shardrag.term_stats as module

    assert len(module._decode_table(found.data)[1]) == module._RECENT_WRITES


def test_an_attempt_that_raised_after_its_write_landed_is_not_counted_again_from_the_journal(tmp_path: Path) -> None:
    class RaisesAfterWriting(FileArtifactStore):
        once = True

        def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
            landed = super().put(name, data, expected_etag=expected_etag)
            if RaisesAfterWriting.once:
                RaisesAfterWriting.once = False
                raise TimeoutError("injected: the response was lost")
            return landed

    table = TermStatsStore(RaisesAfterWriting(tmp_path), ["s0"])
    journal = MemoryJournal()
    tracker = TermStatsTracker(lambda: table, lambda: journal)
    tracker.record(0, added=[Bm25Encoder().document(TEXTS[0])], removed=[])
    with pytest.raises(RuntimeError, match="TimeoutError"):
        tracker.flush(0)
    assert len(journal.entries()) == 1
    TermStatsTracker(lambda: table, lambda: journal).fold()
    tracker.flush(0)
    assert table.load(0) == _delta(TEXTS[0]) and journal.entries() == []


def test_a_journaled_write_id_is_remembered_for_the_keep_window_not_among_the_newest_writes(tmp_path: Path) -> None:
    """A journal entry keeps its failed attempt's plain write id; once applied through the journal it must
    outlast any number of later plain writes, or a copy whose removal was lost would be applied again."""
    from shardrag.term_stats import new_write_id

    table = TermStatsStore(FileArtifactStore(tmp_path), ["s0"])
    entry_id = new_write_id()
    assert table.apply(0, _delta(TEXTS[0]), entry_id=entry_id)
    for _ in range(80):
        table.apply(0, CorpusStats())
    assert table.apply(0, _delta(TEXTS[0]), entry_id=entry_id)  # the journal's late copy
    assert table.load(0) == _delta(TEXTS[0])


def test_a_delta_round_trips_through_the_table_format() -> None:
    delta = _delta(TEXTS[3])
    delta.count([Bm25Encoder().document(TEXTS[0])], -1)
    assert decode_stats(encode_stats(delta, {"x": 5})) == delta


class StatsModel(RuleBasedStateMachine):
    """Writes, artefact failures, worker deaths and folds in any order; the journal itself never fails here (a
    delta whose journal write also fails lives in memory only: the documented exception)."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(TMP) / f"m{id(self)}-{StatsModel.runs}"
        StatsModel.runs += 1
        self.artifacts = FlakyArtifacts(self.root)
        self.table = TermStatsStore(self.artifacts, ["s0", "s1"])
        self.journal = MemoryJournal()
        self.clock = Clock()
        self.expected = {0: CorpusStats(), 1: CorpusStats()}
        self.new_worker()

    runs = 0

    def new_worker(self) -> None:
        self.tracker = TermStatsTracker(lambda: self.table, lambda: self.journal, clock=self.clock)

    @rule(shard=st.integers(0, 1), text=st.sampled_from(TEXTS), sign=st.sampled_from([1, -1]))
    def write(self, shard: int, text: str, sign: int) -> None:
        vector = Bm25Encoder().document(text)
        added, removed = ([vector], []) if sign > 0 else ([], [vector])
        self.tracker.record(shard, added=added, removed=removed)
        self.expected[shard].count([vector], sign)

    @rule(shard=st.integers(0, 1), fail=st.booleans())
    def flush(self, shard: int, fail: bool) -> None:
        self.artifacts.fail = fail
        try:
            self.tracker.flush(shard)
        except RuntimeError:
            assert fail
        finally:
            self.artifacts.fail = False

    @rule()
    def worker_dies_between_calls(self) -> None:
        # Deltas recorded but not yet flushed die with it: a crash inside a write call, the documented exception.
        for shard in (0, 1):
            pending = self.tracker._pending.get((shard, ""))
            if pending:
                self.expected[shard].add(_negated(pending), clamp=False)
        self.new_worker()

    @rule(fail=st.booleans())
    def another_process_folds(self, fail: bool) -> None:
        # A second container, alive beside the worker: it applies the worker's journaled copies too.
        self.artifacts.fail = fail
        try:
            TermStatsTracker(lambda: self.table, lambda: self.journal, clock=self.clock).fold()
        finally:
            self.artifacts.fail = False

    @rule(seconds=st.sampled_from([1.0, 61.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    def teardown(self) -> None:
        self.clock.now += 61.0
        self.worker_dies_between_calls()
        for shard in (0, 1):
            self.tracker.flush(shard)
        for shard in (0, 1):
            assert _same(self.table.load(shard), self.expected[shard]), (shard, self.table.load(shard))
        assert self.journal.entries() == []


def _negated(stats: CorpusStats) -> CorpusStats:
    out = CorpusStats()
    out.add(stats, clamp=False)
    negative = CorpusStats(-out.documents, {t: -c for t, c in out.df.items()}, tokens=-out.tokens)
    negative.measured = -out.measured
    return negative


def _same(a: CorpusStats, b: CorpusStats) -> bool:
    def plain(s: CorpusStats) -> tuple[int, dict[int, int], int, int]:
        return s.documents, {t: c for t, c in s.df.items() if c}, s.tokens, s.measured

    return plain(a) == plain(b)


TMP = ""


def test_every_recorded_delta_lands_exactly_once_under_failures_and_deaths(tmp_path: Path) -> None:
    global TMP
    TMP = str(tmp_path)
    run = settings(
        max_examples=200, stateful_step_count=30, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )(StatsModel)
    run.TestCase().runTest()
