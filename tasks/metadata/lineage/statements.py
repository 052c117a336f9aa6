"""Analyse each normalized statement of a query history once: a literal-insensitive fingerprint, a
bounded cache of ``StatementLineage`` per fingerprint, and a process pool for the statements not seen
yet. Why a fingerprint implies the lineage, and the figures: docs/metadata-lineage.md ("One analysis
per normalized statement").
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from tasks.metadata.lineage.sql import SqlLineage, StatementLineage, Status
from tasks.metadata.masking import sqlglot_quiet

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

#: Literal tokens a fingerprint replaces, and the placeholder of each (its kind stays in the fingerprint).
_LITERALS = {TokenType.STRING: "\x00S\x00", TokenType.NUMBER: "\x00N\x00"}
#: Tokens after which a literal is a value (an operand, a bound, a LIMIT), never a name: not an alias
#: (``AS 'x'``), not a position (``GROUP BY 1``, ``ORDER BY 2``), not a pattern that picks columns
#: (``* ILIKE 'x%'``, checked apart), not a PIVOT's output names (``IN`` lists only without PIVOT).
_VALUE_AFTER = frozenset(
    {
        TokenType.EQ,
        TokenType.NEQ,
        TokenType.NULLSAFE_EQ,
        TokenType.LT,
        TokenType.LTE,
        TokenType.GT,
        TokenType.GTE,
        TokenType.LIKE,
        TokenType.ILIKE,
        TokenType.BETWEEN,
        TokenType.AND,
        TokenType.OR,
        TokenType.NOT,
        TokenType.LIMIT,
        TokenType.OFFSET,
        TokenType.WHEN,
        TokenType.THEN,
        TokenType.ELSE,
        TokenType.PLUS,
        TokenType.DASH,
        TokenType.SLASH,
        TokenType.MOD,
        TokenType.DPIPE,
        TokenType.DATE,
        TokenType.TIMESTAMP,
        TokenType.INTERVAL,
    }
)
_PATTERN = frozenset({TokenType.LIKE, TokenType.ILIKE})
_PIVOTS = frozenset({TokenType.PIVOT, TokenType.UNPIVOT})


class Fingerprinter:
    """Literal-insensitive fingerprints of statements, as DataHub's SQL parsing aggregator keys its
    queries: statements that differ only in the values of their literals share one.

    ``fingerprint(sql, dialect, context)`` → 16 bytes (BLAKE2b of the normalized text), or None when
    sqlglot's tokenizer refuses the text (the statement is then analysed on its own). The text is
    tokenized with sqlglot's tokenizer of the dialect; a string or number literal is replaced by a
    placeholder of its kind only where it can be nothing but a value (``_VALUE_AFTER``, and the items
    of an ``IN (...)`` list in a statement without PIVOT); everything else — names, keywords, other
    literals, comments, white space — is kept as written. So two statements with one fingerprint have
    the same tokens but for the values of such literals, which no lineage depends on: same tables,
    columns, edges and status. (Only an error's position may differ, so ``unparsed`` results are not
    shared: ``shareable``.) ``context``: whatever else the lineage depends on (catalog, database).
    """

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}

    def fingerprint(self, sql: str, dialect: str, context: tuple[str | None, ...] = ()) -> bytes | None:
        tokenizer = self._tokenizers.get(dialect)
        if tokenizer is None:
            tokenizer = self._tokenizers[dialect] = sqlglot.Dialect.get_or_raise(dialect).tokenizer()
        try:
            with sqlglot_quiet():
                tokens = tokenizer.tokenize(sql)
        except SqlglotError:
            return None
        kinds = [token.token_type for token in tokens]
        in_lists = _PIVOTS.isdisjoint(kinds)  # a PIVOT's IN list names its output columns
        spans: list[int] = []  # the literals replaced, by index
        listed = -1  # the last literal replaced as an item of an IN list
        for i in [i for i, kind in enumerate(kinds) if kind in _LITERALS]:
            prev = kinds[i - 1] if i else None
            if prev in _VALUE_AFTER:
                if not (prev in _PATTERN and i > 1 and kinds[i - 2] is TokenType.STAR):
                    spans.append(i)
            elif in_lists and (
                (prev is TokenType.L_PAREN and i > 1 and kinds[i - 2] is TokenType.IN)
                or (prev is TokenType.COMMA and listed == i - 2)
            ):
                spans.append(i)
                listed = i
        parts = [dialect, "\x00", *(c or "" for c in context), "\x00"]
        at = length = 0
        positions = []  # where each placeholder is in the normalized text
        for i in spans:
            token = tokens[i]
            start, end, placeholder = token.start, token.end, _LITERALS[kinds[i]]
            parts.append(sql[at:start])
            length += start - at
            positions.append(str(length))
            parts.append(placeholder)
            length += len(placeholder)
            at = end + 1
        parts.append(sql[at:])
        # The positions make the key unambiguous even for a text that holds a placeholder's characters.
        parts.append("\x00" + ",".join(positions))
        return hashlib.blake2b("".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def shareable(lineage: StatementLineage) -> bool:
    """Whether ``lineage`` holds for every statement of its fingerprint: not ``unparsed`` (whose detail
    may give the position of the error in the text, which a literal's length shifts)."""
    return lineage.status is not Status.UNPARSED


def release_parsed_trees(analyzer: SqlLineage) -> None:
    """Let go of the statements ``analyzer`` analysed. sqlglot's ``MappingSchema`` caches the ``Table``
    nodes it normalizes and looks up (``_normalized_table_cache``, ``_find_cache``: sqlglot PR #7068),
    keyed by the node itself, whose parent links pin its statement's whole tree (~20 kB) for the life of
    the schema: 1.3 GB over 100,000 statements. Emptied here (a no-op where sqlglot has no such caches)."""
    mapping = analyzer.schema.mapping()
    for name in ("_normalized_table_cache", "_find_cache"):
        cache = getattr(mapping, name, None)
        if isinstance(cache, dict):
            cache.clear()


# --- the pool's worker ---------------------------------------------------------------------------

_worker_analyzer: SqlLineage | None = None
_worker_context: Any = None


def _start_worker(analyzer: SqlLineage, context: Any) -> None:
    """A pool process's initializer: the run's analyzer (sqlglot's schema built once here) and the
    context ``SharedAnalysis.run`` jobs get."""
    global _worker_analyzer, _worker_context
    _worker_analyzer, _worker_context = analyzer, context
    analyzer.schema.mapping()


def _run_job(job: Callable[[Any, Any], Any], payload: Any) -> Any:
    """``job(context, payload)`` in a pool process."""
    return job(_worker_context, payload)


def _analyze_batch(batch: list[tuple[str, str, str | None, str | None]]) -> list[StatementLineage]:
    """``(sql, dialect, catalog, database)`` → their lineage, in a pool process."""
    if _worker_analyzer is None:
        raise RuntimeError("the lineage pool's process was not initialized")
    results = [
        _worker_analyzer.analyze(sql, dialect=dialect, catalog=catalog, database=database)
        for sql, dialect, catalog, database in batch
    ]
    release_parsed_trees(_worker_analyzer)
    return results


def default_processes() -> int:
    """Worker processes for a history: the CPUs this process may use, none on a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return cpus if cpus > 1 else 0


# --- the analysis ----------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Statements sent to the pool together (one future), or not sent yet."""

    statements: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    future: concurrent.futures.Future[list[StatementLineage]] | None = None


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    key: bytes | None
    lineage: StatementLineage | None = None
    batch: _Batch | None = None
    index: int = 0


@dataclass
class AnalysisCounts:
    """What ``SharedAnalysis`` did: statements given, analysed (cache misses), served from the cache or
    from a statement in flight, and the largest number of cached lineages."""

    statements: int = 0
    analysed: int = 0
    shared: int = 0
    in_pool: int = 0
    cache_peak: int = 0


class SharedAnalysis(Generic[T]):
    """The lineage of a stream of statements, each normalized statement analysed once.

    Args:
        analyzer: the ``SqlLineage`` of the run (its schema complete: the pool's processes get a copy).
        context: what ``run(job, payload)`` jobs get (a copy in each pool process, made when the pool
            starts), e.g. the collector's own state to build a query's OpenLineage events.
        compact: makes a lineage the cache keeps smaller (e.g. one copy of each name), if given.
        processes: worker processes for statements not seen yet; 0 analyses them in this process.
            Default: ``default_processes()``. The pool starts once ``pool_after`` statements were
            analysed here (a small history is not worth starting processes for); processes are
            started with ``spawn`` (the collector runs in a Prefect task's thread, where ``fork`` is
            unsafe) and get the schema once.
        cache_size: fingerprints whose lineage is kept, least recently used dropped first (a lineage
            takes ~1-20 kB: ~20 column edges for an INSERT of 20 columns).
        batch_size: statements per pool request.
        max_pending: statements given and not yet returned by ``ready()``, at most (then ``ready()``
            waits for the oldest). Each pool process holds a copy of the schema and of ``context``
            (~240 MB for 10,000 tables of 20 columns).

    ``submit(item, sql, dialect, catalog, database)`` (or ``put(item, lineage)`` for a statement that
    needs no analysis), then ``ready()`` yields ``(item, lineage)`` in the order given, as far as they
    are analysed, and ``drain()`` all of them. Use it in a ``with`` block (or ``close()``): its end
    shuts the pool down, a run that failed midway included. If the pool breaks (a process killed), its
    statements are analysed in this process, with a warning.
    """

    def __init__(
        self,
        analyzer: SqlLineage,
        *,
        context: Any = None,
        compact: Callable[[StatementLineage], StatementLineage] | None = None,
        processes: int | None = None,
        cache_size: int = 10_000,
        pool_after: int = 2_000,
        batch_size: int = 16,
        max_pending: int = 2_000,
    ) -> None:
        if cache_size < 0 or batch_size < 1 or max_pending < 1 or pool_after < 0:
            raise ValueError(
                "SharedAnalysis: cache_size and pool_after must be >= 0, batch_size and max_pending >= 1"
            )
        self.analyzer = analyzer
        self.context = context
        self.compact = compact
        self.processes = default_processes() if processes is None else processes
        self.cache_size = cache_size
        self.pool_after = pool_after
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.counts = AnalysisCounts()
        self._fingerprints = Fingerprinter()
        self._cache: collections.OrderedDict[bytes, StatementLineage] = collections.OrderedDict()
        self._in_flight: dict[bytes, tuple[_Batch, int]] = {}
        self._queue: collections.deque[_Entry[T]] = collections.deque()
        self._batch = _Batch()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._pool_failed = False

    def __enter__(self) -> SharedAnalysis[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- feeding -----------------------------------------------------------------------------------

    def put(self, item: T, lineage: StatementLineage | None) -> None:
        """A statement whose lineage is known (or None: not analysed), kept in order with the others."""
        self._queue.append(_Entry(item, None, lineage))
        self._bound()

    def submit(self, item: T, sql: str, dialect: str, catalog: str | None, database: str | None) -> None:
        """A statement to analyse; ``item`` comes back with its lineage from ``ready()``/``drain()``."""
        self.counts.statements += 1
        key = self._fingerprints.fingerprint(sql, dialect, (catalog, database))
        entry: _Entry[T] = _Entry(item, key)
        cached = self._cache.get(key) if key is not None else None
        if cached is not None:
            self._cache.move_to_end(key)  # type: ignore[arg-type]
            entry.lineage = cached
            self.counts.shared += 1
        elif key is not None and key in self._in_flight:
            entry.batch, entry.index = self._in_flight[key]
            self.counts.shared += 1
        elif self._use_pool():
            entry.batch, entry.index = self._batch, len(self._batch.statements)
            self._batch.statements.append((sql, dialect, catalog, database))
            if key is not None:
                self._in_flight[key] = (entry.batch, entry.index)
            self.counts.analysed += 1
            self.counts.in_pool += 1
            if len(self._batch.statements) >= self.batch_size:
                self._send()
        else:
            entry.lineage = self.analyzer.analyze(sql, dialect=dialect, catalog=catalog, database=database)
            release_parsed_trees(self.analyzer)
            self.counts.analysed += 1
            self._remember(key, entry.lineage)
        self._queue.append(entry)
        self._bound()

    def ready(self) -> Iterator[tuple[T, StatementLineage | None]]:
        """The statements whose lineage is known, in the order given, up to the first still analysed
        (waiting for it while more than ``max_pending`` statements are pending)."""
        while self._queue:
            head = self._queue[0]
            waits = head.batch is not None and (head.batch.future is None or not head.batch.future.done())
            if waits and len(self._queue) <= self.max_pending:
                return
            yield self._pop()

    def drain(self) -> Iterator[tuple[T, StatementLineage | None]]:
        """Every statement given, in order, with its lineage (waiting for the pool)."""
        self._send()
        while self._queue:
            yield self._pop()

    # --- other jobs ----------------------------------------------------------------------------------

    @property
    def pooled(self) -> bool:
        """Whether the pool runs (``run`` jobs go to it)."""
        return self._pool is not None

    def run(self, job: Callable[[Any, R], S], payload: R) -> concurrent.futures.Future[S]:
        """``job(context, payload)`` in a pool process if the pool runs, else here (a done future); pass
        the future to ``result`` to get its value. ``job`` must be a module-level function."""
        if self._pool is not None:
            try:
                return self._pool.submit(_run_job, job, payload)
            except (BrokenProcessPool, RuntimeError, OSError) as error:  # a process could not start
                self._broken(error)
        future: concurrent.futures.Future[S] = concurrent.futures.Future()
        future.set_result(job(self.context, payload))
        return future

    def result(self, future: concurrent.futures.Future[S], job: Callable[[Any, R], S], payload: R) -> S:
        """The value of a ``run`` future; the job is run here if the pool broke meanwhile."""
        try:
            return future.result()
        except BrokenProcessPool as error:
            if self._pool is not None:
                self._broken(error)
            return job(self.context, payload)

    # --- internals ---------------------------------------------------------------------------------

    def _bound(self) -> None:
        if len(self._queue) > self.max_pending or (
            self._batch.statements and self._queue[0].batch is self._batch and len(self._queue) > 64
        ):
            self._send()

    def _pop(self) -> tuple[T, StatementLineage | None]:
        entry = self._queue.popleft()
        if entry.batch is not None:
            entry.lineage = self._results(entry.batch)[entry.index]
            if entry.key is not None and self._in_flight.get(entry.key, (None, -1))[0] is entry.batch:
                del self._in_flight[entry.key]
                self._remember(entry.key, entry.lineage)
        return entry.item, entry.lineage

    def _remember(self, key: bytes | None, lineage: StatementLineage) -> None:
        if key is None or not self.cache_size or not shareable(lineage):
            return
        self._cache[key] = self.compact(lineage) if self.compact is not None else lineage
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        self.counts.cache_peak = max(self.counts.cache_peak, len(self._cache))

    def _use_pool(self) -> bool:
        if self._pool is not None:
            return True
        if self._pool_failed or self.processes < 1 or self.counts.analysed < self.pool_after:
            return False
        try:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.analyzer, self.context),
            )
        except (OSError, ImportError, NotImplementedError) as error:  # no semaphores (AWS Lambda), ...
            self._pool_failed = True
            logger.warning(
                "SQL lineage: cannot start %d processes (%s: %s); analysing in this process",
                self.processes,
                type(error).__name__,
                error,
            )
            return False
        logger.info("SQL lineage: statements not seen yet are analysed by %d processes", self.processes)
        return True

    def _send(self) -> None:
        """Send the batch being filled to the pool (or analyse it here if the pool broke)."""
        batch = self._batch
        if not batch.statements:
            return
        self._batch = _Batch()
        if self._pool is None:
            self._analyse_here(batch)
            return
        try:
            batch.future = self._pool.submit(_analyze_batch, batch.statements)
        except (BrokenProcessPool, RuntimeError, OSError) as error:  # a process could not start
            self._broken(error)
            self._analyse_here(batch)

    def _results(self, batch: _Batch) -> list[StatementLineage]:
        if batch.future is None:  # still being filled: the oldest statement waits for it
            self._send()
        assert batch.future is not None
        try:
            return batch.future.result()
        except BrokenProcessPool as error:
            if self._pool is not None:
                self._broken(error)
            self._analyse_here(batch)
            return batch.future.result()

    def _analyse_here(self, batch: _Batch) -> None:
        future: concurrent.futures.Future[list[StatementLineage]] = concurrent.futures.Future()
        future.set_result(
            [
                self.analyzer.analyze(sql, dialect=dialect, catalog=catalog, database=database)
                for sql, dialect, catalog, database in batch.statements
            ]
        )
        release_parsed_trees(self.analyzer)
        batch.future = future

    def _broken(self, error: BaseException) -> None:
        """The pool broke: stop using it; what it held is analysed here when its turn comes."""
        logger.warning(
            "SQL lineage: a pool process died (%s); its statements and the rest are analysed in this process",
            error,
        )
        pool, self._pool, self._pool_failed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Shut the pool down (waiting for its processes to end); what was not returned is dropped."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._queue.clear()
        self._in_flight.clear()
        self._cache.clear()
