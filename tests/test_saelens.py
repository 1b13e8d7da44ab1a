"""Our exported SAEs load in SAELens itself and reconstruct as ours do.

`sae-lens` is an optional extra (`pip install -e ".[saelens]"`, ~100 packages): without it these tests are skipped
and `tests/test_sae.py` checks the export against SAELens' formulas written out (`saelens_forward`)."""

import pytest
import torch

from xai_hsg.sae import (
    SAE,
    ActivationSource,
    SAEConfig,
    SAETrainer,
    TrainerConfig,
    export_saelens,
    synthetic_activations,
)

sae_lens = pytest.importorskip("sae_lens")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def activations():
    "A known sparse dictionary in superposition: 64 directions in 32 dimensions, ~3 active per token."
    x, _ = synthetic_activations(6_000, 32, 64, k=3, seed=0)
    return x


@pytest.mark.parametrize("kind", ["batchtopk", "topk", "l1", "matryoshka"])
def test_saelens_loads_our_export_and_reconstructs_the_same(activations, tmp_path, kind):
    x_train, x_test = activations[:5_000], activations[5_000:]
    sae = SAE(SAEConfig(32, 128, kind=kind, k=3), seed=0)
    SAETrainer(sae, TrainerConfig(batch_size=500, epochs=3, lr=3e-3, progress=False)).fit(
        ActivationSource.from_array(x_train)
    )
    sae.eval()
    export_saelens(sae, tmp_path / kind)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / kind, device="cpu")
    with torch.no_grad():
        ours_recon, ours_z = sae(x_test), sae.encode(x_test)
        their_z = theirs.encode(x_test)
        their_recon = theirs.decode(their_z)
    assert (
        type(theirs).__name__
        == {"batchtopk": "JumpReLUSAE", "matryoshka": "JumpReLUSAE", "topk": "TopKSAE", "l1": "StandardSAE"}[kind]
    )
    assert (ours_z > 0).float().sum() > 0  # a trained SAE with active latents, not a vacuous comparison
    assert torch.equal(ours_z > 0, their_z > 0)  # the same latents fire
    torch.testing.assert_close(their_z, ours_z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(their_recon, ours_recon, atol=1e-4, rtol=1e-4)
