"""The progress of the running accounts proofs, read at each scrape of ``/metrics``.

A proof runs in a check's worker thread and counts what it did in its
:class:`~tracker.proof.accounts.budget.ProofCounters` (docs/architecture.md, "Bounded memory"); this
collector sums those of the proofs running now, so that the series stay few (no label per
archive) and cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tracker.observability.collectors import PREFIX
from tracker.proof.accounts.budget import MemoryBudget, running

#: Each series: its name after the prefix, its help, the ProofCounters field it sums.
SERIES = (
    ("accounts_proofs_running", "Accounts proofs running now.", None),
    ("accounts_proof_accounts", "Stored accounts the running proofs have read.", "records"),
    ("accounts_proof_bytes", "Storage bytes the running proofs have read.", "bytes"),
    (
        "accounts_proof_hashed",
        "Newest versions the running proofs have hashed, ahead and in their second reads.",
        "hashed",
    ),
    (
        "accounts_proof_spill_bytes",
        "Bytes of the running proofs' spilled index on disk.",
        "spilled",
    ),
    (
        "accounts_proof_memory_bytes",
        "Bytes of the memory budget the running proofs hold.",
        "held",
    ),
    ("accounts_proof_workers_busy", "Worker processes the running proofs use.", "workers_busy"),
)


class ProofProgress(Collector):
    """The sums of the running proofs' progress (see the module), and the peaks of the
    tracker's shared budget (``budget()``: None before the first proof)."""

    def __init__(self) -> None:
        self.budget: Callable[[], MemoryBudget | None] = lambda: None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge per series."""
        proofs = running()
        for name, text, field in SERIES:
            value = len(proofs) if field is None else sum(getattr(p, field) for p in proofs)
            yield GaugeMetricFamily(PREFIX + name, text, value=value)
        budget = self.budget()
        held, spilled = (budget.peak, budget.spilled_peak) if budget is not None else (0, 0)
        yield GaugeMetricFamily(
            PREFIX + "accounts_proof_memory_peak_bytes",
            "The most the accounts proofs held of their shared memory budget at once.",
            value=held,
        )
        yield GaugeMetricFamily(
            PREFIX + "accounts_proof_spill_peak_bytes",
            "The most one accounts proof had spilled on disk at once.",
            value=spilled,
        )
