"""Export to Hugging Face: clean loading, GDES fold, RTD head round trip, generator fill-mask, one-line errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, SMALL_MODEL, corpus_overrides, write_corpus
from debertav3.data import Tokenizer
from debertav3.train.export import HEAD_FILE, WORD_EMBEDDINGS, export, load_discriminator, main
from debertav3.train import load_config
from debertav3.train.config_io import to_yaml
from debertav3.train.build import build_model
from debertav3.train.loop import train
from debertav3.train.manifest import write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

transformers = pytest.importorskip("transformers", reason="transformers (the dev extra) is what export targets")

TOL = 1e-5
RECIPE = {"model": SMALL_MODEL, "data": {"max_seq_length": 64}, "optim": {"warmup_steps": 1},
          "train": {"batch_size": 4, "max_steps": 2, "save_every": 2, "eval_every": 2, "eval_batches": 1,
                    "log_every": 1, "embedding_stats_every": 2, "progress": False}}



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training output_dir with one real checkpoint (gdes, two steps)."""
    out = tmp_path_factory.mktemp("run")
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), 40_000, 10_000)
    train(load_config(RECIPE, None, [f"train.output_dir={out}", *corpus_overrides(corpus)]))
    return out


@pytest.fixture(scope="module")
def checkpoint(run_dir) -> Path:
    return run_dir / "checkpoints" / "step-00000002"


def derived_checkpoint(source: Path, target: Path, seed: int = 0, **changes) -> tuple[Path, torch.nn.Module]:
    """A copy of `source` whose config takes `changes` ("section.key": value) and whose weights are all random.

    Random values everywhere (E_Delta included) make the fold checks exact statements, not ones a zero table
    or an untrained head could pass by accident.
    """
    shutil.copytree(source, target)
    cfg = load_config(None, str(source / "config.yaml"))
    for key, value in changes.items():
        section, name = key.split(".") if "." in key else (None, key)
        setattr(getattr(cfg, section) if section else cfg, name, value)
    model = build_model(cfg, Tokenizer.load(source / "tokenizer").special_ids)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    (target / "config.yaml").write_text(to_yaml(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, target / "model.safetensors")
    write_manifest(target)  # sealed anew: the copy's files are meant to differ from the source's
    return target, model.eval()


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 8000, (3, 20), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def reference_model(checkpoint: Path):
    cfg = load_config(None, str(checkpoint / "config.yaml"))
    model = build_model(cfg, Tokenizer.load(checkpoint / "tokenizer").special_ids)
    model.load_state_dict(load_file(checkpoint / "model.safetensors"))
    return model.eval()


def test_discriminator_loads_cleanly_and_matches_ours(run_dir, checkpoint, tmp_path):
    out = export(run_dir, tmp_path / "disc")  # an output_dir: its latest complete checkpoint
    base, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    _, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, num_labels=2,
                                                                              output_loading_info=True)
    assert not info["unexpected_keys"]
    assert {k.split(".")[0] for k in info["missing_keys"]} <= {"pooler", "classifier"}  # the new head only
    ours = reference_model(checkpoint)
    ids, mask = batch()
    with torch.no_grad():
        expected = ours.discriminator.deberta(ids, mask, ours.discriminator_embedding())
        actual = base.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (expected[real] - actual[real]).abs().max().item() <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "deberta-v2" and config["position_buckets"] == 256 and not config["legacy"]
    assert config["debertav3_export"]["step"] == 2 and config["debertav3_export"]["embedding_sharing"] == "gdes"
    text = "The discriminator is what users keep."
    hf_ids = transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"]
    ours_tok = Tokenizer.load(checkpoint / "tokenizer")
    assert hf_ids == [ours_tok.cls_id, *ours_tok.encode_batch([text])[0], ours_tok.sep_id]


@pytest.mark.parametrize("sharing", ["gdes", "es", "nes"])
def test_exported_table_is_the_one_the_discriminator_used(checkpoint, tmp_path, sharing):
    source, model = derived_checkpoint(checkpoint, tmp_path / "ckpt", **{"rtd.embedding_sharing": sharing})
    out = export(source, tmp_path / "disc")
    table = load_file(out / "model.safetensors")[WORD_EMBEDDINGS]
    e_g = model.generator_embedding.detach()
    expected = {"gdes": lambda: e_g + model.embedding_delta.detach(), "es": lambda: e_g,
                "nes": lambda: model.discriminator.deberta.embeddings.word_embeddings.weight.detach()}[sharing]()
    assert torch.equal(table, expected)
    assert not torch.equal(table, e_g) or sharing == "es"
    # The RTD head, reloaded through our API, gives the discriminator's logits exactly.
    ids, mask = batch(1)
    with torch.no_grad():
        assert torch.equal(load_discriminator(out)(ids, mask), model.discriminator(ids, mask, expected))


def test_generator_runs_fill_mask_and_matches_our_head(checkpoint, tmp_path):
    out = export(checkpoint, tmp_path / "gen", part="generator")
    theirs, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = reference_model(checkpoint).generator
    ids, mask = batch(2)
    with torch.no_grad():
        # transformers has no EMD: it applies the head to the plain last layer, so compare with that.
        table = ours.deberta.embeddings.word_embeddings.weight
        expected = ours.lm_predictions["lm_head"](ours.deberta(ids, mask), table)
        actual = theirs.eval()(input_ids=ids, attention_mask=mask).logits
    assert (expected[mask.bool()] - actual[mask.bool()]).abs().max().item() <= TOL
    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out))
    predictions = fill("The cat sat on the [MASK].", top_k=3)
    assert len(predictions) == 3 and all("sequence" in p for p in predictions)


def test_exports_initialise_continued_pretraining(checkpoint, tmp_path):
    """model.init_discriminator / init_generator read our exports back: same E_D, generator and backbone."""
    from debertav3.interop.hf import load_rtd_weights

    source, original = derived_checkpoint(checkpoint, tmp_path / "ckpt")
    disc, gen = export(source, tmp_path / "disc"), export(source, tmp_path / "gen", part="generator")
    cfg = load_config(None, str(source / "config.yaml"))
    fresh = build_model(cfg, Tokenizer.load(source / "tokenizer").special_ids).eval()
    load_rtd_weights(fresh, str(disc), str(gen))
    assert torch.equal(fresh.generator_embedding, original.generator_embedding)
    assert (fresh.discriminator_embedding() - original.discriminator_embedding()).abs().max() <= 1e-6
    ids, mask = batch(3)
    with torch.no_grad():
        states = [m.discriminator.deberta(ids, mask, m.discriminator_embedding()) for m in (fresh, original)]
    assert (states[0] - states[1]).abs().max().item() <= TOL


def test_mlm_checkpoint_exports_its_network_as_the_generator(checkpoint, tmp_path, capsys):
    source, _ = derived_checkpoint(checkpoint, tmp_path / "mlm", objective="mlm")
    assert main([str(source), str(tmp_path / "disc")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--part generator" in err and "\n" not in err
    assert not (tmp_path / "disc").exists()
    out = export(source, tmp_path / "gen", part="generator")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2  # full depth


def test_narrow_generator_run_exports_its_discriminator_and_refuses_the_generator(checkpoint, tmp_path, capsys):
    source, model = derived_checkpoint(checkpoint, tmp_path / "narrow", **{"model.generator_hidden_size": 32})
    assert model.generator.config.hidden_size == 32
    disc = load_discriminator(export(source, tmp_path / "disc")).eval()
    ids, mask = batch()
    with torch.no_grad():
        assert (disc(ids, mask) - model.discriminator(ids, mask, model.discriminator_embedding())).abs().max() <= TOL
    assert main([str(source), str(tmp_path / "gen"), "--part", "generator"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "export the discriminator" in err and "\n" not in err
    assert not (tmp_path / "gen").exists()


def broken(checkpoint: Path, tmp_path: Path, problem: str) -> Path:
    target = tmp_path / problem
    if problem == "vocabulary":  # a tokenizer with more ids than the embedding table has rows
        return derived_checkpoint(checkpoint, target, **{"model.vocab_size": 4000})[0]
    shutil.copytree(checkpoint, target)
    victim = {"incomplete": "trainer_state.json", "no_weights": "model.safetensors", "no_tokenizer": "tokenizer",
              "damaged": "model.safetensors"}
    path = target / victim[problem]
    if problem == "damaged":  # same size, other bytes: only the manifest's hash can tell
        path.write_bytes(bytes(path.stat().st_size))
    else:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return target


@pytest.mark.parametrize("problem,message", [("missing", "not found"), ("incomplete", "not a complete checkpoint"),
                                             ("no_weights", "model.safetensors is missing"),
                                             ("no_tokenizer", "tokenizer"), ("vocabulary", "vocabulary mismatch"),
                                             ("damaged", "model.safetensors is corrupted")])
def test_bad_checkpoint_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, problem, message):
    source = tmp_path / "absent" if problem == "missing" else broken(checkpoint, tmp_path, problem)
    out = tmp_path / "out"
    assert main([str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_an_output_dir_exports_its_newest_whole_checkpoint(checkpoint, tmp_path):
    """A damaged newest checkpoint is passed over for the one before it, as resume does."""
    older, newer = (tmp_path / "run" / "checkpoints" / f"step-0000000{s}" for s in (1, 2))
    shutil.copytree(checkpoint, older)
    broken(checkpoint, tmp_path, "damaged").rename(newer)
    export(tmp_path / "run", tmp_path / "from_run")
    export(older, tmp_path / "from_older")
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("from_run", "from_older"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_output_needs_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "disc"
    export(checkpoint, out)
    assert main([str(checkpoint), str(out)]) == 2 and "--overwrite" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    assert main([str(checkpoint), str(tmp_path / "notes"), "--overwrite"]) == 2  # not a model directory
    assert main([str(checkpoint), str(out), "--overwrite"]) == 0
    assert (out / HEAD_FILE).is_file()


def test_tool_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), str(tmp_path / "nope"),
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
