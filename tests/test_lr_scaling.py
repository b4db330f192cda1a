"""The learning rate the real-size recipes choose for the global batch (optim.lr_scaling=sqrt), against hand
computations; an lr the user sets is kept; every recipe's collapse guard is on."""

import importlib.util
import math
from pathlib import Path

import pytest

from debertav3.train import load_config
from debertav3.train.optim import resolve_lr, scaled_lr, tokens_per_step

ROOT = Path(__file__).resolve().parents[1]
REAL_SIZE = ("rtd_xsmall", "rtd_small", "rtd_base", "rtd_large")
PAPER_TOKENS = 8192 * 512  # the DeBERTaV3 paper's global batch


def recipe(name: str) -> dict:
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RECIPE


def test_rtd_base_on_one_process_trains_at_the_scaled_lr():
    """8 sequences of 512 tokens = 4,096 tokens, 1/1024 of the paper's batch: 5e-4 / sqrt(1024) = 5e-4 / 32."""
    resolved, rule = resolve_lr(load_config(recipe("rtd_base")), num_processes=1)
    assert resolved.optim.lr == pytest.approx(1.5625e-5, rel=1e-12)
    assert resolved.optim.lr_scaling == "none"  # the resolved config trains at that lr wherever it is loaded
    assert rule == "optim.lr_scaling=sqrt: 0.0005 x sqrt(4,096 / 4,194,304 tokens per step); set optim.lr to choose it"


@pytest.mark.parametrize("name,lr", [("rtd_xsmall", 5e-4 / math.sqrt(512)), ("rtd_small", 5e-4 / math.sqrt(512)),
                                     ("rtd_base", 5e-4 / 32), ("rtd_large", 3e-4 / math.sqrt(2048))])
def test_every_real_size_recipe_scales_its_paper_lr(name, lr):
    """xsmall and small: 16 x 512 tokens (1/512 of the paper's batch); large: 4 x 512 (1/2048)."""
    assert resolve_lr(load_config(recipe(name)), 1)[0].optim.lr == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("processes,batch,accumulation,length,expected", [
    (8, 8, 4, 512, 5e-4 * math.sqrt(256 / 8192)),  # rtd.sh's batch, 256 x 512: 8.84e-5 against its 1e-4
    (1, 4, 8, 1024, 5e-4 * math.sqrt(32 * 1024 / PAPER_TOKENS)),  # pszemraj/deberta's 32 x 1024: 4.42e-5
    (64, 32, 4, 512, 5e-4),  # the paper's own batch
    (128, 32, 4, 512, 5e-4),  # twice it: capped at the reference lr, never above it
])
def test_the_rule_against_a_hand_computation(processes, batch, accumulation, length, expected):
    cfg = load_config(recipe("rtd_base"), None, [f"train.batch_size={batch}", f"data.max_seq_length={length}",
                                                 f"model.max_position_embeddings={max(512, length)}",
                                                 f"train.gradient_accumulation_steps={accumulation}"])
    assert tokens_per_step(cfg, processes) == processes * batch * accumulation * length
    assert scaled_lr(cfg.optim, tokens_per_step(cfg, processes)) == pytest.approx(expected, rel=1e-12)
    assert resolve_lr(cfg, processes)[0].optim.lr == pytest.approx(expected, rel=1e-12)


def test_an_lr_the_user_sets_is_kept(tmp_path):
    for overrides, yaml in ((["optim.lr=1e-4"], None), ([], "optim:\n  lr: 1.0e-4\n")):
        if yaml:
            (tmp_path / "run.yaml").write_text(yaml)
        cfg = load_config(recipe("rtd_base"), str(tmp_path / "run.yaml") if yaml else None, overrides)
        resolved, rule = resolve_lr(cfg, 1)
        assert (resolved.optim.lr, rule) == (1e-4, "optim.lr")
    # ... and scaled from where the user says, when the user asks for the rule as well
    cfg = load_config(recipe("rtd_base"), None, ["optim.lr=1e-3", "optim.lr_scaling=sqrt"])
    assert resolve_lr(cfg, 1)[0].optim.lr == pytest.approx(1e-3 / 32, rel=1e-12)


def test_the_small_recipes_keep_their_tuned_lr():
    for name, lr in (("rtd_tiny", 1e-3), ("rtd_cpu", 1e-3)):
        resolved, rule = resolve_lr(load_config(recipe(name)), 1)
        assert (resolved.optim.lr, rule) == (lr, "optim.lr")


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "recipes").glob("rtd_*.py")))
def test_every_recipe_checks_for_collapse(name):
    """On, and within the run; the real-size recipes check from the end of warm-up, the peak lr, on: their first
    evaluations come early in warm-up, where a run at a small batch's lr has not left the prior yet."""
    cfg = load_config(recipe(name))
    assert 0 < cfg.train.collapse_check_step <= cfg.train.max_steps and 0.5 < cfg.train.collapse_auc < 1
    if name in REAL_SIZE:
        assert cfg.optim.lr_scaling == "sqrt"
        assert cfg.train.collapse_check_step == cfg.optim.warmup_steps
        assert cfg.train.collapse_check_step % cfg.train.eval_every == 0


@pytest.mark.parametrize("override,match", [("optim.lr_scaling=linear", "optim.lr_scaling 'linear' is unknown"),
                                            ("optim.lr_reference_tokens=0", "optim.lr_reference_tokens must be")])
def test_bad_rule_settings_are_refused(override, match):
    from debertav3.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(None, None, [override])
