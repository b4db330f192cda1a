"""Plan and run an embedding-sharing ablation: every mode x seed pretrains, exports and fine-tunes at equal budget.

Modes (DeBERTaV3 paper, section 5.1 / table 2, plus the baselines the README compares against):
    es, nes, gdes   objective rtd with `rtd.embedding_sharing` set to the mode; the discriminator is exported
    mlm             objective mlm (DeBERTa's MLM baseline): its full-depth MLM backbone is exported
    random          no pretraining: the discriminator's architecture fine-tuned from a fresh initialisation

Every run gets the same recipe, `key=value` overrides, `train.max_steps`, data and fine-tuning options; only the
mode and the seed differ. Layout of the output directory:

    ablation.json                       the budget (recipe, steps, overrides, fine-tuning options), fixed at start
    runs/<mode>-seed<S>/stages.json     finished stages, rewritten atomically after each one
    runs/<mode>-seed<S>/pretrain/       train.output_dir (checkpoints/, tensorboard/)
    runs/<mode>-seed<S>/model/          the exported Hugging Face directory
    runs/<mode>-seed<S>/finetune/<task>/metrics.json

Resuming: a stage listed in stages.json is never redone; an unfinished pretraining continues from its last
checkpoint (train.resume=auto); an unfinished export or fine-tuning is simply run again (both write atomically).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..constants import SHARING_MODES
from ..io_utils import atomic_write_text
from ..errors import AblationError, Interrupted

REPOSITORY = Path(__file__).resolve().parents[2]
MODES = (*SHARING_MODES, "mlm", "random")
SPEC_FILE = "ablation.json"
STAGES_FILE = "stages.json"
# What must match when an existing ablation directory is continued: a change would compare unequal budgets.
BUDGET_FIELDS = ("recipe", "max_steps", "overrides", "finetune")




@dataclass
class FinetuneOptions:
    """What every fine-tuning run of the ablation shares (`debertav3.finetune.FinetuneConfig` fields)."""

    max_train_examples: Optional[int] = None
    epochs: int = 3
    lr: Optional[float] = None  # None: the fine-tuning default
    batch_size: Optional[int] = None

    def as_options(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class AblationSpec:
    recipe: str
    modes: list[str]
    seeds: list[int]
    max_steps: int
    tasks: list[str]
    output: str
    data_dir: Optional[str] = None  # fine-tuning data; None: debertav3.finetune's default
    overrides: list[str] = field(default_factory=list)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)

    def budget(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k in BUDGET_FIELDS}


@dataclass(frozen=True)
class Run:
    mode: str
    seed: int
    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name

    def stages(self, tasks: list[str]) -> list[str]:
        """pretrain (not for random), export, then one fine-tuning stage per task."""
        return (["pretrain"] if self.mode != "random" else []) + ["export"] + [f"finetune:{t}" for t in tasks]

    def done(self) -> list[str]:
        marker = self.directory / STAGES_FILE
        return json.loads(marker.read_text())["done"] if marker.is_file() else []

    def mark_done(self, stage: str) -> None:
        atomic_write_text(self.directory / STAGES_FILE, json.dumps({"done": [*self.done(), stage]}, indent=2) + "\n")


def plan(spec: AblationSpec) -> list[Run]:
    """Seed-major order, so that a time-boxed ablation has every mode of its first seeds rather than half the modes."""
    root = Path(spec.output) / "runs"
    return [Run(mode, seed, root / f"{mode}-seed{seed}") for seed in spec.seeds for mode in spec.modes]


def load_recipe(name: str) -> dict:
    """The `RECIPE` dict of recipes/<name>.py (or of a .py file given by path)."""
    path = Path(name) if name.endswith(".py") else REPOSITORY / "recipes" / f"{name}.py"
    if not path.is_file():
        known = sorted(p.stem for p in (REPOSITORY / "recipes").glob("*.py"))
        raise AblationError(f"recipe {name!r} not found ({path}); use one of {known} or a path to a recipe .py file")
    module_spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not isinstance(getattr(module, "RECIPE", None), dict):
        raise AblationError(f"{path} defines no RECIPE dict; a recipe file must define RECIPE = {{...}}")
    return module.RECIPE


def pretrain_overrides(spec: AblationSpec, run: Run) -> list[str]:
    """The user's overrides, then what the ablation fixes per run (last wins in OmegaConf's dotlist merge).

    The user's `rtd.*` overrides are for the RTD modes: the mlm run, which has no discriminator, leaves them out
    (a pretraining refuses them with objective mlm)."""
    mode = {"mlm": ["objective=mlm"], "random": ["objective=rtd"]}.get(  # random: only the architecture is used
        run.mode, ["objective=rtd", f"rtd.embedding_sharing={run.mode}"])
    user = [o for o in spec.overrides if not (run.mode == "mlm" and o.startswith("rtd."))]
    return [*user, *mode, f"train.max_steps={spec.max_steps}", f"train.seed={run.seed}",
            f"train.output_dir={run.directory / 'pretrain'}", "train.resume=auto", "train.progress=false"]


def run_config(spec: AblationSpec, run: Run):
    """The validated pretraining `Config` of one run (random uses it for the architecture and the tokenizer)."""
    from ..errors import ConfigError
    from ..train.config_io import load_config

    try:
        return load_config(load_recipe(spec.recipe), None, pretrain_overrides(spec, run))
    except ConfigError as exc:
        raise AblationError(str(exc)) from None


def check_budget(spec: AblationSpec) -> None:
    """Record the budget on the first start; refuse to continue a directory that was started with another one."""
    path = Path(spec.output) / SPEC_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = [k for k in BUDGET_FIELDS if recorded.get(k) != spec.budget()[k]]
        if changed:
            raise AblationError(f"{spec.output} holds an ablation with a different {changed[0]} "
                                f"({recorded.get(changed[0])!r}); rerun it with the same settings or use a new --output")
        return
    atomic_write_text(path, json.dumps(spec.budget(), indent=2) + "\n")


def checkpointed_step(output_dir) -> int:
    """The step of the latest complete checkpoint in a run's train.output_dir (0 when there is none)."""
    from ..train.checkpoint import complete_checkpoints, read_state

    done = complete_checkpoints(output_dir)
    return read_state(done[-1])["step"] if done else 0


def pretrain(spec: AblationSpec, run: Run) -> None:
    from ..train.loop import train

    cfg = run_config(spec, run)
    train(cfg)
    # train() also returns after a SIGTERM/SIGINT (having saved a checkpoint): only a run at max_steps is done.
    step = checkpointed_step(cfg.train.output_dir)
    if step < spec.max_steps:
        raise Interrupted(f"pretraining of {run.name} stopped at step {step} of {spec.max_steps}; "
                          "rerun the same command to continue")


def export_model(spec: AblationSpec, run: Run) -> None:
    """The network users would fine-tune: the discriminator (E_D folded), the MLM backbone, or a random one."""
    from ..train.export import export

    out = run.directory / "model"
    if run.mode != "random":
        export(run.directory / "pretrain", out, "generator" if run.mode == "mlm" else "discriminator", overwrite=True)
        return
    from ..data import Tokenizer
    from ..interop.hf import save_backbone
    from ..model import DebertaV3Model

    # The directory gives fine-tuning the architecture and tokenizer; `random_init` then draws fresh weights.
    cfg = run_config(spec, run)
    save_backbone(DebertaV3Model(cfg.model.backbone()), out)
    Tokenizer.load(cfg.data.tokenizer).save(out)


def finetune_task(spec: AblationSpec, run: Run, task: str) -> None:
    from ..finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig.from_preset(task, spec.data_dir, model=str(run.directory / "model"),
                                     output=str(run.directory / "finetune" / task), seed=run.seed,
                                     random_init=run.mode == "random", progress=False,
                                     **spec.finetune.as_options())
    finetune(cfg)


def execute(spec: AblationSpec, run: Run, log: Callable[[str], None] = print) -> None:
    """Run the stages of `run` that are not marked done, marking each as it finishes."""
    done = run.done()
    for stage in run.stages(spec.tasks):
        if stage in done:
            continue
        log(f"[ablation] {run.name}: {stage}")
        if stage == "pretrain":
            pretrain(spec, run)
        elif stage == "export":
            export_model(spec, run)
        else:
            finetune_task(spec, run, stage.split(":", 1)[1])
        run.mark_done(stage)


def validate(spec: AblationSpec) -> None:
    """Every input mistake, found before anything is trained: modes, recipe, overrides, tasks and their files."""
    unknown = [m for m in spec.modes if m not in MODES]
    if unknown or not spec.modes:
        raise AblationError(f"mode {unknown[0] if unknown else '(none)'!r} is unknown; use a comma list of {list(MODES)}")
    if spec.max_steps <= 0 or not spec.seeds:
        raise AblationError("--max-steps and --seeds must be positive")
    for run in plan(spec)[:1]:
        run_config(spec, run)  # recipe and overrides
    from ..finetune import FinetuneConfig

    for task in spec.tasks:
        FinetuneConfig.from_preset(task, spec.data_dir, model="-", output="-", **spec.finetune.as_options())
