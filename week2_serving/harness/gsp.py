"""SGLang's generated-shared-prefix workload (gsp): groups of requests sharing a system prompt.

    python -m week2_serving.harness.bench --dataset-name generated-shared-prefix \
        --gsp-num-groups 4 --gsp-prompts-per-group 16 --gsp-system-prompt-len 256

Where `shared-prefix` cycles a few prefixes over `num_prompts` requests, gsp states the shape
of the traffic the way SGLang's `bench_serving` does: how many applications (groups), how many
requests each, how long its system prompt and each question. The prefix-cache hit rate it
allows is (system prompt) / (system prompt + question) for all but each group's first request.
"""

from __future__ import annotations

import numpy as np

from week2_serving.harness.client import Request
from week2_serving.harness.synth import random_ids, vocabulary


def generated_shared_prefix_requests(
    tokenizer,
    num_groups: int,
    prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    seed: int = 0,
    ignore_eos: bool = True,
) -> list[Request]:
    """SGLang's `generated-shared-prefix` (gsp): `num_groups` system prompts of
    `system_prompt_len` tokens, each followed by `prompts_per_group` questions of `question_len`
    tokens; the groups' requests are shuffled together (seeded), as users of several
    applications arrive interleaved."""
    if min(num_groups, prompts_per_group, system_prompt_len, question_len, output_len) < 1:
        raise ValueError("gsp groups, prompts per group and every length must be >= 1")
    rng = np.random.default_rng(seed)
    vocab = vocabulary(tokenizer)
    reqs = []
    for _ in range(num_groups):
        system = random_ids(rng, vocab, system_prompt_len)
        for _ in range(prompts_per_group):
            ids = system + random_ids(rng, vocab, question_len)
            reqs.append(Request(ids, len(ids), output_len, ignore_eos=ignore_eos))
    return [reqs[i] for i in rng.permutation(len(reqs))]
