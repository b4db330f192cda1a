"""Continued pretraining: RTDModel initialised from Hugging Face directories, in every sharing mode."""

import pytest
import torch

from debertav3 import DebertaV3Model, RTDModel, generator_config, preset
from debertav3.errors import CheckpointError
from debertav3.interop.hf import config_to_hf, load_rtd_weights, save_backbone

transformers = pytest.importorskip("transformers", reason="transformers writes the reference checkpoints")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A discriminator (DebertaV2Model) and a generator (DebertaV2ForMaskedLM, legacy=False), random weights."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("released")
    disc_cfg = preset("tiny")
    disc = DebertaV3Model(disc_cfg)
    with torch.no_grad():
        disc.embeddings.word_embeddings.weight.normal_()
    save_backbone(disc, root / "disc")
    gen_cfg = generator_config(disc_cfg)
    gen = transformers.DebertaV2ForMaskedLM(
        transformers.DebertaV2Config(**config_to_hf(gen_cfg, ["DebertaV2ForMaskedLM"])))
    gen.save_pretrained(root / "gen")
    return root, disc, gen


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_init_from_released_checkpoints(released, sharing):
    root, disc, gen = released
    disc_cfg = preset("tiny")
    model = RTDModel(generator_config(disc_cfg), disc_cfg, embedding_sharing=sharing)
    load_rtd_weights(model, str(root / "disc"), str(root / "gen"))
    gen_state = gen.state_dict()
    assert torch.equal(model.generator_embedding, gen_state["deberta.embeddings.word_embeddings.weight"])
    assert torch.equal(model.generator.lm_predictions["lm_head"].dense.weight,
                       gen_state["lm_predictions.lm_head.dense.weight"])
    assert torch.equal(model.discriminator.deberta.encoder.layer[1].output.dense.weight,
                       disc.encoder.layer[1].output.dense.weight)
    expected_e_d = gen_state["deberta.embeddings.word_embeddings.weight"] if sharing == "es" \
        else disc.embeddings.word_embeddings.weight
    assert torch.allclose(model.discriminator_embedding(), expected_e_d, atol=1e-6)


def test_init_rejects_an_architecture_mismatch(released):
    root, _, _ = released
    other = preset("tiny", intermediate_size=128)
    model = RTDModel(generator_config(other), other)
    with pytest.raises(CheckpointError, match="model.init_discriminator"):
        load_rtd_weights(model, str(root / "disc"), None)


@pytest.mark.parametrize("sharing", ["es", "nes", "gdes"])
def test_a_discriminator_only_start_keeps_the_release_table_exactly(released, sharing):
    """model.generator_start=release_embeddings: E_G := the release's E_D, so the effective E_D at step 0 is the
    release's bit for bit (under gdes E_Delta = E_D - E_D = 0); random keeps a random E_G, and under gdes the
    effective E_G + (E_D - E_G) only rounds to the release."""
    root, disc, _ = released
    release = disc.embeddings.word_embeddings.weight
    disc_cfg = preset("tiny")
    torch.manual_seed(1)
    model = RTDModel(generator_config(disc_cfg), disc_cfg, embedding_sharing=sharing)
    load_rtd_weights(model, str(root / "disc"), None, "release_embeddings")
    assert torch.equal(model.discriminator_embedding(), release)
    assert torch.equal(model.generator_embedding, release)
    if sharing == "gdes":
        assert not model.embedding_delta.any()

    torch.manual_seed(1)
    model = RTDModel(generator_config(disc_cfg), disc_cfg, embedding_sharing=sharing)
    load_rtd_weights(model, str(root / "disc"), None, "random")
    if sharing != "es":  # es has one table: the release's, whatever the generator_start
        assert not torch.equal(model.generator_embedding, release)
    torch.testing.assert_close(model.discriminator_embedding(), release)
