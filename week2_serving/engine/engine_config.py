"""What the engine is asked to be (`EngineConfig`) and what it gives back (`StepOutput` per
step, `RequestOutput` per finished request). Every value is checked in `__post_init__`, before
any weights load: a bad one is an error naming it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.device import pick_device, pick_inference_dtype
from common.results import runs_root
from week1_gpt_kvcache.sampling import TokenLogprobs
from week2_serving.engine.kv_quant import check_kv_cache_dtype
from week2_serving.engine.lora.config import LoRAConfig
from week2_serving.engine.scheduler import get_policy
from week2_serving.engine.spec.config import SpecConfig


@dataclass
class EngineConfig:
    model: str | Path = field(default_factory=lambda: runs_root() / "week1" / "hf-model")
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # KV pool size in blocks; None = from kv_cache_memory
    kv_cache_memory: float = 0.5  # KV pool GiB (vLLM CPU's VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None  # None = the model's context length
    enable_prefix_caching: bool = True
    scheduling: str = "continuous"  # how requests join the batch: a name in scheduler.POLICIES
    # Most requests waiting for a slot; one more is refused with EngineFull (0 = no bound). A
    # few batches' worth of max_num_seqs: enough to refill the batch as requests finish,
    # while a client refused at once can retry or go elsewhere instead of waiting longer and
    # longer behind a queue that only grows.
    max_num_waiting: int = 256
    served_model_name: str | None = None  # the model_name label of the metrics; None: model
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N: common.device
    # auto (bf16 on a GPU / CPU with native BF16, else float32) | float32 | bfloat16 | float16:
    dtype: str = "auto"  # weights, activations and KV cache (common.device.pick_inference_dtype)
    kv_cache_dtype: str = "auto"  # auto (= dtype) | int8 | fp8: 8-bit KV, scales (kv_quant.py)
    offline: bool | None = None  # None: offline only if HF_HUB_OFFLINE is set (common.hub)
    lora: LoRAConfig | None = None  # serve LoRA adapters (lora/config.py); None: the base only
    fast_prepare: bool = True  # speed lever: step inputs by tensor ops (step_plan.py); False: loop
    batched_sampling: bool = True  # speed lever: plain temperature rows in one draw (sampler.py)
    one_decode_group: bool = False  # speed lever: all decodes in one attention call (step_plan)
    # speed lever (CPU): attention by one C++ op per layer reading K/V in place (paged_cpu.py).
    # None (auto): on where it applies (CPU, unquantized KV) and the op builds here, else the
    # SDPA groups; True: required (an op that cannot be built is an error); False: off
    paged_kernel: bool | None = None
    # speed lever (CPU): projection and LM-head weights laid out once in oneDNN's blocked
    # format, as vLLM's CPU build packs its linears (ModelRunner.prepack_linears). None
    # (auto): on a CPU whose PyTorch has oneDNN; True: the same, said; False: plain weights
    prepacked_linears: bool | None = None
    # speed lever (CPU): RMSNorm and the residual add before it as one C++ call each, built
    # with the paged op (paged_cpu.py). None (auto): on where the op builds and the model's
    # norm is RMSNorm; True: required; False: off
    fused_norms: bool | None = None
    # speed lever: torch.compile of each block's dense parts, N dynamic (ModelRunner.compile_
    # layers); compiled at start (needs a C++ compiler on the CPU); not with LoRA adapters
    torch_compile: bool = False
    # ablation (CPU): plan a steady decode step's successor in a helper thread while its
    # forward pass runs (mini-sglang's overlap scheduling; overlap.py)
    overlap_scheduling: bool = False
    speculative: SpecConfig | None = None  # speculative decoding (engine/spec/); None: off
    enforce_eager: bool = False  # no CUDA graphs for decode steps (cuda_graphs.py); CPU: never
    max_seq_len_to_capture: int = 8192  # decode steps with a longer context run eager (vLLM)
    torch_device: torch.device = field(init=False, repr=False)  # device and dtype, resolved
    torch_dtype: torch.dtype = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Checked here, before any weights load: a bad value is an error naming it at once.
        self.torch_device = pick_device(self.device)
        self.torch_dtype = pick_inference_dtype(self.torch_device, self.dtype)
        if not 0 < self.kv_cache_memory < float("inf"):  # NaN fails this too
            raise ValueError(f"kv_cache_memory={self.kv_cache_memory!r}: use GiB > 0, finite")
        if get_policy(self.scheduling).pad_finished and self.speculative:
            raise ValueError(
                f"scheduling={self.scheduling!r} is a baseline without speculative decoding: "
                "drop --speculative-method, or use another policy"
            )
        check_kv_cache_dtype(self.kv_cache_dtype, self.torch_device)
        if self.paged_kernel and not paged_kernel_applies(self):
            raise ValueError(
                f"paged_kernel: a CPU op over an unquantized KV pool; here device "
                f"{self.torch_device}, kv_cache_dtype {self.kv_cache_dtype!r}: drop --paged-kernel"
            )
        if self.torch_compile and (
            self.lora is not None or self.prepacked_linears or self.fused_norms
        ):
            raise ValueError(
                "torch_compile: compiles the plain weights' graph, not with LoRA adapters, "
                "--prepacked-linears (the compiler lays the weights out itself) or --fused-norms "
                "(a C++ call the compiler cannot trace): drop one"
            )
        if self.overlap_scheduling and (
            self.torch_device.type != "cpu" or self.speculative or self.scheduling != "continuous"
        ):
            raise ValueError(
                f"overlap_scheduling: CPU, continuous scheduling, no speculative decoding; here "
                f"device {self.torch_device}, scheduling {self.scheduling!r}, speculative "
                f"{'on' if self.speculative else 'off'}: drop --overlap-scheduling"
            )
        if self.fused_norms and self.torch_device.type != "cpu":
            raise ValueError(f"fused_norms: CPU ops; here device {self.torch_device}: drop it")
        if not isinstance(self.max_num_waiting, int) or self.max_num_waiting < 0:
            raise ValueError(f"max_num_waiting={self.max_num_waiting!r}: use an integer >= 0")
        if type(self.max_seq_len_to_capture) is not int or self.max_seq_len_to_capture < 1:
            raise ValueError(f"max_seq_len_to_capture={self.max_seq_len_to_capture!r}: use >= 1")


def paged_kernel_applies(cfg: EngineConfig) -> bool:
    """The paged op reads an unquantized KV pool on the CPU (the GPU path has its own kernels)."""
    return cfg.torch_device.type == "cpu" and cfg.kv_cache_dtype == "auto"


@dataclass
class StepOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    error: str | None = None  # what went wrong, when finish_reason is "error"
    logprobs: TokenLogprobs | None = None  # of the new token, when the request asked


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
