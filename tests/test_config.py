"""Config schema: presets, validation, OmegaConf overrides, and that every recipe loads."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from debertav3 import ModelConfig, generator_config, preset
from debertav3.model.config import PRESETS
from debertav3.train import load_config
from debertav3.train.config_io import to_yaml
from debertav3.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.py"))


def test_presets_have_released_sizes():
    expected = {"xsmall": (384, 12, 6, 1536), "small": (768, 6, 12, 3072), "base": (768, 12, 12, 3072),
                "large": (1024, 24, 16, 4096)}
    for name, (hidden, layers, heads, inter) in expected.items():
        cfg = preset(name)
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == \
            (hidden, layers, heads, inter)
        assert cfg.head_size == 64 and cfg.vocab_size == 128100 and cfg.position_buckets == 256
        assert cfg.pos_att_type == ["p2c", "c2p"] and cfg.share_att_key and cfg.norm_rel_ebd == "layer_norm"
        assert generator_config(cfg).num_hidden_layers == layers // 2
        assert generator_config(cfg).hidden_size == hidden


@pytest.mark.parametrize("changes,match", [
    (dict(hidden_size=100, num_attention_heads=3), "divisible"),
    (dict(pos_att_type=["c2p", "p2p"]), "pos_att_type"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(vocab_size=-5), "vocab_size"),
    (dict(norm_rel_ebd="rms"), "norm_rel_ebd"),
    (dict(hidden_act="swish2"), "hidden_act"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
])
def test_model_config_rejects_bad_values_in_one_line(changes, match):
    with pytest.raises(ValueError, match=match) as info:
        ModelConfig(**changes)
    assert "\n" not in str(info.value)


def test_pos_att_type_accepts_hf_string_form():
    assert ModelConfig(pos_att_type="p2c|c2p").pos_att_type == ["p2c", "c2p"]


def test_overrides_merge_in_order(tmp_path):
    yaml = tmp_path / "extra.yaml"
    yaml.write_text("train:\n  max_steps: 7\n  batch_size: 3\n")
    cfg = load_config({"train": {"max_steps": 5}}, str(yaml), ["train.batch_size=4", "rtd.embedding_sharing=es",
                                                               "data.train_files=[a.txt,b.txt]"])
    assert cfg.train.max_steps == 7 and cfg.train.batch_size == 4
    assert cfg.rtd.embedding_sharing == "es" and cfg.data.train_files == ["a.txt", "b.txt"]
    assert cfg.mask_mode == "all_mask" and load_config(None, None, ["objective=mlm"]).mask_mode == "bert"


@pytest.mark.parametrize("override,match", [
    ("train.max_stepz=3", "train.max_stepz"),
    ("train.max_steps=many", "train.max_steps"),
    ("rtd.embedding_sharing=tied", "embedding_sharing"),
    ("model.hidden_size=100", "divisible"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.max_seq_length=1024", "max_position_embeddings"),
    ("objective=clm", "objective"),
    ("max_steps", "key=value"),
    ("train.collapse_auc=0.5", "train.collapse_auc must be in"),
    ("train.collapse_auc=1.0", "train.collapse_auc must be in"),
    ("train.collapse_check_step=-1", "train.collapse_check_step must be >= 0"),
])
def test_bad_overrides_fail_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, None, [override])
    assert "\n" not in str(info.value)


def test_collapse_guard_defaults_and_off_switch():
    assert (load_config().train.collapse_check_step, load_config().train.collapse_auc) == (2000, 0.6)
    cfg = load_config(None, None, ["train.collapse_check_step=0", "train.collapse_auc=0.75"])
    assert (cfg.train.collapse_check_step, cfg.train.collapse_auc) == (0, 0.75)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_loads(recipe):
    spec = importlib.util.spec_from_file_location(recipe.stem, recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = load_config(module.RECIPE)
    size = recipe.stem.split("_")[1]
    if size in PRESETS and size != "tiny":
        assert cfg.model.hidden_size == PRESETS[size]["hidden_size"]
        layers = PRESETS[size]["num_hidden_layers"]
        if cfg.objective == "rtd":
            assert generator_config(cfg.model.backbone()).num_hidden_layers == layers // 2
        else:
            assert cfg.model.num_hidden_layers == layers


def test_command_line_error_is_one_line_and_nonzero():
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "rtd_tiny.py"), "train.nope=1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train.nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_schema_and_the_model_import_without_the_data_pipeline():
    """The model, the objective and the training schema do not import `datasets` (a heavy import that costs every
    process that only builds or benchmarks a model about 90 MB of RSS); the data pipeline imports it on use."""
    code = ("import sys; import debertav3, debertav3.train.config, debertav3.train.optim; "
            "assert 'datasets' not in sys.modules, 'imported datasets'; "
            "from debertav3.data import build_datasets; assert 'datasets' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("where", ["command line", "YAML file"])
def test_a_single_value_of_a_list_key_is_a_one_element_list(where, tmp_path):
    """`data.train_files=path/to/file.txt`, without brackets, as people type it (and `train_files: a.txt` in YAML)."""
    values = {"data.train_files": "path/to/file.txt", "data.valid_files": "held/*.txt.gz", "model.pos_att_type": "c2p",
              "train.log_with": "tensorboard"}
    if where == "command line":
        cfg = load_config(None, None, [f"{key}={value}" for key, value in values.items()])
    else:
        (tmp_path / "run.yaml").write_text("data:\n  train_files: path/to/file.txt\n  valid_files: held/*.txt.gz\n"
                                           "model:\n  pos_att_type: c2p\ntrain:\n  log_with: tensorboard\n")
        cfg = load_config(None, str(tmp_path / "run.yaml"))
    assert (cfg.data.train_files, cfg.data.valid_files) == (["path/to/file.txt"], ["held/*.txt.gz"])
    assert (cfg.model.pos_att_type, cfg.train.log_with) == (["c2p"], ["tensorboard"])
    assert load_config(None, None, ["data.train_files=[a.txt,b.txt]"]).data.train_files == ["a.txt", "b.txt"]


@pytest.mark.parametrize("typed,meant", [("auto", "auto"), ("no", "no"), ("bf16", "bf16"), ("fp16", "fp16"),
                                         ("off", "no"), ("false", "no")])
def test_every_mixed_precision_value_works_as_typed(typed, meant, tmp_path):
    """YAML 1.1, which OmegaConf parses both with, reads `no`, `off` and `false` as the boolean false."""
    (tmp_path / "run.yaml").write_text(f"train:\n  mixed_precision: {typed}\n")
    assert load_config(None, None, [f"train.mixed_precision={typed}"]).train.mixed_precision == meant
    assert load_config(None, str(tmp_path / "run.yaml")).train.mixed_precision == meant
    with pytest.raises(ConfigError, match="train.mixed_precision 'yes' is unknown; use auto, no, bf16 or fp16"):
        load_config(None, None, ["train.mixed_precision=yes"])


def test_rtd_keys_with_objective_mlm_are_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, None, ["objective=mlm", "rtd.embedding_sharing=nes", "rtd.rtd_weight=10"])
    assert str(info.value) == ("rtd.embedding_sharing, rtd.rtd_weight set with objective=mlm, which ignores them; "
                               "remove them or use objective=rtd")
    (tmp_path / "run.yaml").write_text("objective: mlm\nrtd:\n  temperature: 2.0\n")
    with pytest.raises(ConfigError, match="^rtd.temperature set with objective=mlm"):
        load_config(None, str(tmp_path / "run.yaml"))
    # Only values the user sets count: a recipe's rtd section, and the defaults every saved config.yaml lists, pass.
    assert load_config({"rtd": {"rtd_weight": 20.0}}, None, ["objective=mlm"]).objective == "mlm"
    (tmp_path / "saved.yaml").write_text(to_yaml(load_config(None, None, ["objective=mlm"])))
    assert load_config(None, str(tmp_path / "saved.yaml")).objective == "mlm"
