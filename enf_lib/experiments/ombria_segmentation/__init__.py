"""Flood segmentation on OMBRIA from the latents of an Equivariant Neural Field.

Two ENFs share one latent point cloud per tile:

1. ``meta_train``: a reconstruction ENF (8 outputs: S1 and S2, before and after the flood) is
   meta-learned on the training tiles.
2. ``fit_latents_train`` / ``fit_latents_test``: latents are fitted to every tile with that
   decoder frozen; ``reconstruct_test`` measures the test PSNR per channel group.
3. ``train_mask_decoder``: a second ENF with one output (the flood logit) is trained directly
   (no inner loop) to decode the flood mask from the *frozen* latents (contexts normalised with
   training statistics), with a logistic loss plus a soft Dice loss on random pixel subsets.
4. ``predict_test``: masks of the test tiles, decoded in chunks, scored over the whole split
   beside the trivial "no flood" prediction.

``python -m enf_lib.experiments ombria-segmentation --profile quick --out runs/seg`` runs them
all; the notebook ``08_ombria_segmentation`` calls the same functions one by one. The
configuration and profiles are in :mod:`.config`, the stages in :mod:`.stages`, the figures in
:mod:`.figures`.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from enf_lib.experiments.ombria_segmentation.config import NAME, PROFILES, Config, SegConfig
from enf_lib.experiments.ombria_segmentation.figures import (figure_inputs, figure_latents,
                                                             figure_masks, figure_reconstructions)
from enf_lib.experiments.ombria_segmentation.stages import (Data, fit_latents, load_data,
                                                            memory_estimate, predict_test,
                                                            reconstruct_test, results,
                                                            train_mask_decoder,
                                                            train_reconstruction)
from enf_lib.experiments.runner import Run


def run(config: Config, run: Run) -> dict[str, Any]:
    """Every stage, the figures and ``metrics.json``; returns the metrics."""
    data = load_data(config)
    run.use_data(*data.arrays())
    learner, state, _ = train_reconstruction(run, config, data)
    latents = fit_latents(run, config, data, learner, state)
    z_test = latents["test"][0]
    recon = reconstruct_test(run, config, data, learner, state, z_test)
    model, stats, _ = train_mask_decoder(run, config, data, latents["train"][0])
    prob = predict_test(run, config, data, model, stats, z_test)
    figures = {"inputs": figure_inputs(config, data),
               "reconstructions": figure_reconstructions(config, data, recon),
               "masks": figure_masks(config, data, prob),
               "latents": figure_latents(config, data, z_test)}
    for name, fig in figures.items():
        run.save_figure(fig, name)
        plt.close(fig)
    return run.write_metrics(results(config, data, latents, recon, prob))


__all__ = ["NAME", "PROFILES", "Config", "Data", "SegConfig", "figure_inputs", "figure_latents",
           "figure_masks", "figure_reconstructions", "fit_latents", "load_data",
           "memory_estimate", "predict_test", "reconstruct_test", "results", "run",
           "train_mask_decoder", "train_reconstruction"]
