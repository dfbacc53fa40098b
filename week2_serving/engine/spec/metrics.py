"""Speculative-decoding counters, under vLLM's names, in the engine's metrics registry.

- `vllm:spec_decode_num_drafts_total`: verification rounds (one per speculating sequence
  and step);
- `vllm:spec_decode_num_draft_tokens_total`: tokens proposed;
- `vllm:spec_decode_num_accepted_tokens_total`: of those, accepted;
- `vllm:spec_decode_num_accepted_tokens_per_pos_total{position="j"}`: accepted at position j
  (0-based), so acceptance per position = that / drafts.

Mean acceptance length = 1 + accepted / drafts: tokens emitted per verification round (the
bonus or replacement token is the 1). With a constant per-token acceptance rate alpha and k
guesses, theory gives (1 - alpha^(k+1)) / (1 - alpha) (Leviathan et al. 2023).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class SpecMetrics:
    def __init__(self, registry: CollectorRegistry, model_name: str, k: int):
        labels = ["model_name"]

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry).labels(model_name)

        self.drafts = counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.")
        self.draft_tokens = counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.")
        self.accepted = counter(
            "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens."
        )
        per_pos = Counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft position.",
            labels + ["position"],
            registry=registry,
        )
        self.per_pos = [per_pos.labels(model_name, str(j)) for j in range(k)]
        self.counts = {"drafts": 0, "draft_tokens": 0, "accepted": 0}  # plain numbers too
        self.accepted_per_pos = [0] * k
        self.tested = 0  # guesses put to the test: accepted ones + the first rejected one

    def observe(self, num_proposed: int, num_accepted: int) -> None:
        """One verification round: `num_proposed` guesses, the first `num_accepted` accepted."""
        self.drafts.inc()
        self.draft_tokens.inc(num_proposed)
        self.accepted.inc(num_accepted)
        self.counts["drafts"] += 1
        self.counts["draft_tokens"] += num_proposed
        self.counts["accepted"] += num_accepted
        self.tested += num_accepted + (num_accepted < num_proposed)
        for j in range(num_accepted):
            self.per_pos[j].inc()
            self.accepted_per_pos[j] += 1

    def summary(self) -> dict:
        """The counts, the acceptance rate, mean acceptance length, acceptance per position."""
        c = self.counts
        drafts = c["drafts"]
        return {
            **c,
            "acceptance_rate": c["accepted"] / c["draft_tokens"] if c["draft_tokens"] else None,
            # alpha, the per-guess acceptance probability: accepted / guesses tested
            "alpha": c["accepted"] / self.tested if self.tested else None,
            "mean_acceptance_length": 1 + c["accepted"] / drafts if drafts else None,
            "acceptance_per_position": [n / drafts for n in self.accepted_per_pos]
            if drafts
            else None,
        }


def theory_acceptance_length(alpha: float, k: int) -> float:
    """Expected tokens per round when each guess is accepted with probability alpha."""
    if alpha >= 1:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)
