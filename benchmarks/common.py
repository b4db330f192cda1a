"""Shared pieces of the RTD step benchmark: the two training steps, their input, the machine, the child processes.

Ours is `RTDModel` with one AdamW step (debertav3.train.optim.build_optimizer). The baseline is what a user without
debertav3 would write: generator `DebertaV2ForMaskedLM` at half depth, discriminator
`DebertaV2ForTokenClassification` (1 label), one shared word-embedding table, replacements sampled from the
generator's softmax (special tokens excluded, as ELECTRA sec. 3.1 samples), loss = MLM + 50 * BCE over non-pad
tokens, AdamW. Both get the same shapes and the same batch (15% of positions masked).

Every measurement runs in a child interpreter started by `run_child` (benchmarks/step_process.py) with
PYTHONPATH naming the source tree whose debertav3 it imports, so our step can be timed from another checkout (an
untouched worktree of an older commit) with this script. Only imports that every tree has are used here.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from debertav3 import ModelConfig, RTDModel, generator_config
from debertav3.train.optim import build_optimizer

try:
    from debertav3.train.config import OptimConfig
except ModuleNotFoundError:  # trees before the package restructuring keep it at the top level
    from debertav3.train_config import OptimConfig

REPO = Path(__file__).resolve().parents[1]
STEP_PROCESS = Path(__file__).resolve().parent / "step_process.py"
MASK_ID, SPECIALS = 4, (0, 1, 2, 3, 4)
THEIRS = "transformers"
# The environment variables glibc reads at start-up for the thresholds keep_freed_memory sets with mallopt.
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
ALLOCATOR_SETTINGS = ("glibc", "keep_freed")
IMPL_KEYS = ("attention_impl", "mlm_loss_impl", "dropout_impl")
SHAPE_KEYS = ("seq", "batch", "hidden", "layers", "heads", "vocab", "sharing")


def add_shape_arguments(parser) -> None:
    """The issue's shapes by default: hidden 256, 6 layers, 4 heads, intermediate 4 x hidden, vocab 32000, ES."""
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--sharing", choices=("es", "nes", "gdes"), default="es",
                        help="our embedding sharing (the baseline shares one table, as es)")


def model_config(shape: dict, impl: dict[str, str]) -> ModelConfig:
    """The shape's config with the `impl` keys this tree's ModelConfig has (older trees had three)."""
    known = {key: value for key, value in impl.items() if key in ModelConfig.__dataclass_fields__}
    return ModelConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                       num_attention_heads=shape["heads"], intermediate_size=4 * shape["hidden"], **known)


def make_batch(shape: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids between [CLS]=1 and [SEP]=2; in each row round(15%) of the inner positions replaced by [MASK]
    with MLM labels: the same number in every row, as the trainer's masker selects (data/masking.py)."""
    gen = torch.Generator().manual_seed(seed)
    original = torch.randint(10, shape["vocab"], (shape["batch"], shape["seq"]), generator=gen)
    original[:, 0], original[:, -1] = 1, 2
    inner = shape["seq"] - 2
    chosen = torch.rand(shape["batch"], inner, generator=gen).argsort(1)[:, :round(0.15 * inner)] + 1
    selected = torch.zeros_like(original, dtype=torch.bool).scatter_(1, chosen, True)
    return dict(input_ids=original.masked_fill(selected, MASK_ID), attention_mask=torch.ones_like(original),
                labels=original.masked_fill(~selected, -100))


class TrainingStep:
    """zero_grad, forward + backward of `loss`, optimizer step: one iteration as a training loop runs it."""

    optimizer: torch.optim.Optimizer

    def loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.optimizer.step()


class OurStep(TrainingStep):
    """`RTDModel` as the trainer calls it: where the tree's forward takes them, the static inputs (prediction slots,
    uniforms, loss denominators) that let a compiled step run without recompiling or syncing."""

    def __init__(self, shape: dict, impl: dict[str, str], compile: bool = False):
        disc = model_config(shape, impl)
        self.model = RTDModel(generator_config(disc), disc, shape["sharing"], special_token_ids=SPECIALS)
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = build_optimizer(self.model, OptimConfig(lr=1e-4, warmup_steps=0))
        self.static_inputs = "mask_positions" in inspect.signature(RTDModel.forward).parameters

    def loss(self, batch):
        if self.static_inputs:
            from debertav3.objective.rtd import prediction_positions

            positions = prediction_positions(batch["labels"])
            masked, real = batch["labels"] != -100, batch["attention_mask"]
            uniforms = 1.0 - torch.rand(positions.shape, device=positions.device)
            batch = dict(batch, mask_positions=positions, uniforms=uniforms,
                         denominators=torch.stack([masked.sum(), real.sum()]).float())
        return self.forward(**batch).loss


class TransformersStep(TrainingStep):
    def __init__(self, shape: dict, compile: bool = False):
        import transformers

        try:
            from debertav3.interop.hf import config_to_hf
        except ModuleNotFoundError:  # trees before the package restructuring (the alternating method runs both
            from debertav3.hf import config_to_hf  # steps in the tree of ours)

        disc = model_config(shape, {})
        as_hf = lambda cfg, **kw: transformers.DebertaV2Config(**config_to_hf(cfg, [], **kw))  # noqa: E731
        self.generator = transformers.DebertaV2ForMaskedLM(as_hf(generator_config(disc)))
        self.discriminator = transformers.DebertaV2ForTokenClassification(as_hf(disc, num_labels=1))
        self.discriminator.deberta.embeddings.word_embeddings = self.generator.deberta.embeddings.word_embeddings
        params = {id(p): p for m in (self.generator, self.discriminator) for p in m.parameters()}
        self.optimizer = torch.optim.AdamW(params.values(), lr=1e-4)
        self.special = torch.tensor(SPECIALS)
        # Compiled as a user would: each network on its own, the sampling between them eager.
        self.run_generator, self.run_discriminator = ((torch.compile(m) if compile else m)
                                                      for m in (self.generator, self.discriminator))

    def loss(self, batch):
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        gen_out = self.run_generator(input_ids=ids, attention_mask=mask, labels=labels)
        masked = labels != -100
        with torch.no_grad():
            logits = gen_out.logits[masked].float()
            logits[:, self.special] = float("-inf")
            sampled = torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)
            disc_ids = ids.clone()
            disc_ids[masked] = sampled
            original = torch.where(masked, labels, ids)
            rtd_labels = (disc_ids != original).float()
        rtd_logits = self.run_discriminator(input_ids=disc_ids, attention_mask=mask).logits.squeeze(-1)
        rtd = torch.nn.functional.binary_cross_entropy_with_logits(rtd_logits[mask.bool()], rtd_labels[mask.bool()])
        return gen_out.loss + 50.0 * rtd


def build_step(spec: dict, shape: dict) -> TrainingStep:
    """`spec` is {"kind": "ours", "impl": {...}, "compile": bool} or {"kind": "transformers", "compile": bool}."""
    compiled = spec.get("compile", False)
    return OurStep(shape, spec["impl"], compiled) if spec["kind"] == "ours" else TransformersStep(shape, compiled)


def gemm_peak(seconds: float = 3.0, size: int = 2048) -> float:
    """Best fp32 matrix-multiply rate (FLOP/s) over repeated 2048^3 products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best


def _inplace_gemm_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """2 * M * K * N (times the batch) for addmm_ and baddbmm_, which FlopCounterMode's registry leaves out."""
    return 2 * math.prod(a_shape) * b_shape[-1]


# In-place GEMMs do the same work as their out-of-place forms; without these entries they would count as zero.
INPLACE_GEMMS = {torch.ops.aten.addmm_: _inplace_gemm_flops, torch.ops.aten.baddbmm_: _inplace_gemm_flops}


def flops_per_token(step: TrainingStep, batch, tokens: int) -> float:
    """Model FLOPs of one forward + backward, counted by torch's FlopCounterMode (in-place GEMMs included).

    Counted on the uncompiled modules (a compiled step runs the same network). In trees before the narrowed
    attention contract, FlopCounterMode's global module hooks made the fast paths decline, so the count is the
    reference's everywhere: the network's FLOPs as the papers write them."""
    if isinstance(step, OurStep):
        step.forward = step.model
    else:
        step.run_generator, step.run_discriminator = step.generator, step.discriminator
    with warnings.catch_warnings(), FlopCounterMode(display=False, custom_mapping=INPLACE_GEMMS) as counter:
        warnings.simplefilter("ignore")  # an older tree's one-line notice that a fast path declines
        step.loss(batch).backward()
    return counter.get_total_flops() / tokens


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM; ru_maxrss would start from the parent's peak, kept over exec)."""
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is empty on most Linux systems)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    import transformers

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "libc": " ".join(platform.libc_ver())}


def tree_commit(tree: Path) -> str:
    """`git rev-parse --short HEAD` of `tree`, with "+changes" when tracked files differ from it."""
    git = ["git", "-C", str(tree)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        return "no-git"
    changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def parse_impl(text: str) -> dict[str, str]:
    """`auto` (the tree's defaults), `eager` (every reference implementation) or `key=value,...` of IMPL_KEYS
    (a tree without one of the keys ignores it)."""
    if text == "auto":
        return {}
    if text == "eager":
        return {key: "eager" for key in IMPL_KEYS}
    impl = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    if not impl or len(impl) != len(text.split(",")) or set(impl) - set(IMPL_KEYS):
        raise ValueError(f"--ours {text!r}: use auto, eager or key=value,... with keys from {list(IMPL_KEYS)}")
    return impl


@dataclass
class Variant:
    """One step timed against the transformers step: ours with implementations (`impl_name` as given), compiled or
    not, from a source tree; or the transformers step compiled (`Variant.theirs_compiled()`)."""

    impl_name: str
    tree: Path
    compile: bool = False
    kind: str = "ours"
    impl: dict[str, str] = field(init=False)
    commit: str = field(init=False)

    def __post_init__(self):
        self.impl = parse_impl(self.impl_name) if self.kind == "ours" else {}
        if not (self.tree / "debertav3" / "__init__.py").is_file():
            raise ValueError(f"--ours ...@{self.tree}: no debertav3 package there; name a source tree")
        self.commit = tree_commit(self.tree)

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        """`IMPL[+compile][@TREE]`, e.g. `auto`, `eager+compile`, `auto@/work/exp/base19`."""
        impl_name, _, tree = spec.partition("@")
        impl_name, plus, option = impl_name.partition("+")
        if plus and option != "compile":
            raise ValueError(f"--ours {spec!r}: the only option after + is compile")
        return cls(impl_name, Path(tree).resolve() if tree else REPO, compile=bool(plus))

    @classmethod
    def theirs_compiled(cls) -> "Variant":
        return cls("", REPO, compile=True, kind=THEIRS)

    @property
    def label(self) -> str:
        if self.kind == THEIRS:
            return f"{THEIRS} compiled"
        return f"ours {self.impl_name}{' compiled' if self.compile else ''} @ {self.commit}"

    def spec(self) -> dict:
        return {"kind": self.kind, "impl": self.impl, "compile": self.compile, "tree": str(self.tree),
                "label": self.label}


def theirs_spec() -> dict:
    return {"kind": THEIRS, "compile": False, "tree": str(REPO), "label": THEIRS}


def allocator_environment(setting: str) -> dict[str, str]:
    """The child's environment: glibc's defaults ("glibc"), or keep_freed_memory's thresholds ("keep_freed")."""
    env = {key: value for key, value in os.environ.items() if key not in ALLOCATOR_VARIABLES}
    if setting == "keep_freed":
        from debertav3.train.allocator import LIMIT
        env.update({key: str(LIMIT) for key in ALLOCATOR_VARIABLES})
    return env


def run_child(job: dict, tree: str, setting: str) -> dict:
    """Run `job` in benchmarks/step_process.py in a fresh interpreter importing debertav3 from `tree`."""
    env = allocator_environment(setting)
    env["PYTHONPATH"] = os.pathsep.join([tree, *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as scratch:
        job_path, result_path = Path(scratch, "job.json"), Path(scratch, "result.json")
        job_path.write_text(json.dumps(job))
        done = subprocess.run([sys.executable, str(STEP_PROCESS), str(job_path), str(result_path)], env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"benchmark child failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(result_path.read_text())
    if not result["debertav3_file"].startswith(tree):
        raise RuntimeError(f"the child imported {result['debertav3_file']}, not the tree {tree}")
    return result
