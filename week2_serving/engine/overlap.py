"""Overlap scheduling (mini-sglang's), as an ablation flag: plan step n+1 while step n's
forward pass runs.

A step is: schedule, build the inputs, forward, sample, update. Only the forward needs the
weights; the rest is host work, and the next step's scheduling waits for this step's tokens.
mini-sglang hides it anyway: it schedules step n+1 *before* step n's tokens are known, with the
tokens as placeholders filled in on the device, and drops the extra work of a sequence that
turns out to have finished. Here the same idea for the steps where it is exact:

- step n is a steady decode step (every running sequence, one token each, nothing waiting, no
  copy-on-write): then step n+1 is, as the scheduler would build it, the same sequences one
  position further, unless one of them finishes or is aborted;
- while step n's forward runs, a helper thread reserves each sequence's next slot
  (`BlockManager.reserve_next_slot`) and builds step n+1's inputs (`StepPlanner.plan` with
  `ahead`): positions, slots, block tables, with the token ids left empty;
- at step n+1 the plan is used if it is still what the scheduler would do (the same running
  sequences, each one token ahead of the plan, nothing waiting); the sampled ids go in, and
  schedule and input building are skipped. Otherwise it is dropped and the step runs as usual.

So the tokens are those of the plain loop (tested), whether a plan is used or dropped. Whether
it pays depends on a free core: on the CPU the helper thread competes with the forward pass for
the cores and for Python's global interpreter lock (engine/levers.py measures it). CPU only;
not with speculative decoding or the static policies.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from common.results import get_logger
from week2_serving.engine.model_runner import StepInputs
from week2_serving.engine.scheduler import ScheduledBatch

log = get_logger("week2.engine.overlap")


@dataclass
class Plan:
    batch: ScheduledBatch  # step n+1 as the scheduler would build it
    inputs: StepInputs  # its inputs, ids still 0
    computed: list[int]  # each sequence's num_computed at step n+1


class Overlap:
    def __init__(self, engine):
        self.engine = engine
        # the helper thread, started now: it takes the cores of the thread that builds the
        # engine, not those of the thread that will step it (a server pins that one)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="overlap-plan")
        self.pool.submit(lambda: None).result()
        self.plan: Plan | None = None
        self.used = self.dropped = 0  # plans used / planned and dropped

    def eligible(self, batch: ScheduledBatch) -> bool:
        """Is `batch` a steady decode step, whose successor can be planned now?"""
        sch, runner = self.engine.scheduler, self.engine.runner
        return (
            runner.fast_prepare
            and getattr(runner, "planner", None) is not None
            and not sch.waiting
            and not batch.preempted
            and not batch.copies
            and self.all_running(batch.seqs)
            and all(n == 1 for n in batch.num_tokens)
            and all(batch.sample)
            and not any(s.spec_tokens or s.padding for s in batch.seqs)
        )

    def all_running(self, seqs) -> bool:
        """Are `seqs` exactly the scheduler's running sequences, in its order?"""
        running = self.engine.scheduler.running
        return len(seqs) == len(running) and all(a is b for a, b in zip(seqs, running))

    def start(self, batch: ScheduledBatch) -> Future | None:
        """Plan the step after `batch` in the helper thread (call after `batch`'s inputs are
        built: the helper grows block tables); None where it cannot be planned."""
        return self.pool.submit(self._plan, batch) if self.eligible(batch) else None

    def _plan(self, batch: ScheduledBatch) -> Plan | None:
        bm, runner = self.engine.block_manager, self.engine.runner
        if not all(bm.reserve_next_slot(s) for s in batch.seqs):
            return None  # (a slot reserved so far is one the next step allocates anyway)
        nxt = ScheduledBatch()
        for s in batch.seqs:
            nxt.seqs.append(s)
            nxt.num_tokens.append(1)
            nxt.sample.append(True)
        ids, positions, slots, groups, rows, tables, seq_of_row = runner.planner.plan(nxt, True)
        inputs = StepInputs(ids, positions, slots, groups, rows, None, tables, seq_of_row)
        return Plan(nxt, inputs, [s.num_computed + 1 for s in batch.seqs])

    def finish(self, future: Future | None) -> None:
        """Wait for the helper (after the forward pass, before the update) and keep its plan;
        a plan that failed is only a plan lost: the next step is scheduled as usual."""
        self.plan = None
        if future is not None:
            try:
                self.plan = future.result()
            except Exception:
                log.exception("planning the next step failed; it is scheduled as usual")

    def take(self):
        """(batch, inputs) of this step from the plan, when it is still what the scheduler
        would build; else None (and the plan is dropped)."""
        plan, self.plan = self.plan, None
        if plan is None:
            return None
        sch = self.engine.scheduler
        seqs = plan.batch.seqs
        if (
            sch.waiting
            or not self.all_running(seqs)
            or any(s.num_computed != c or len(s) != c + 1 for s, c in zip(seqs, plan.computed))
        ):
            self.dropped += 1
            return None
        self.used += 1
        inputs = plan.inputs
        inputs.ids = torch.tensor([s.tokens[-1] for s in seqs], device=inputs.ids.device)
        runner = self.engine.runner
        if runner.lora is not None:
            inputs.lora = runner.lora.plan(seqs, plan.batch.num_tokens)
        return plan.batch, inputs
