"""Generating CIFAR-10 images by flow matching in ENF latent space.

Stages (each cached in the run folder):

1. ``meta_train``: meta-learn the ENF decoder on the training images, with **fixed poses**
   (``fit.lr_pose = 0``): every latent keeps its initial grid pose, so the poses the sampler
   uses are exactly those the decoder was trained and fitted with.
2. ``fit_train``, ``fit_test``: latents for the training images and for test images (their
   PSNR is the reconstruction quality); ``pose_study`` (optional) measures what moving poses
   would cost: a second decoder fitted with moving poses, decoded at its fitted poses and at
   fresh grid poses.
3. ``train_dit``: a diffusion transformer (:mod:`enf_lib.diffusion`) learns the flow from noise
   to the normalised contexts, conditioned on class and on the (grid) poses, with an EMA.
4. ``sample``: class-conditional contexts with classifier-free guidance, decoded to images.
5. ``evaluate``: a latent classifier trained on real training latents, applied to generated
   latents (per class) and to real test latents; nearest-training-neighbour distances of the
   samples and of test images, in pixel and latent space; FID when its network is available.

The configuration and profiles are in :mod:`.config`, the stages in :mod:`.stages`, the figures
in :mod:`.figures`; :func:`run` chains them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import matplotlib.pyplot as plt
import numpy as np

from enf_lib.datasets import CIFAR10_CLASSES, load_cifar10
from enf_lib.experiments.cifar10_diffusion.config import (NAME, NUM_CLASSES, PROFILES, Config,
                                                          DataConfig, DiffusionConfig,
                                                          EvalConfig, SamplingConfig)
from enf_lib.experiments.cifar10_diffusion.figures import (guidance_figure, neighbours_figure,
                                                           sample_grid_figure, trajectory_figure)
from enf_lib.experiments.cifar10_diffusion.stages import (
    class_labels, classifier_accuracy, decode_tokens, dit_optimizer, draw_samples, generate,
    guidance_sweep, memorisation, pose_study, sampling_poses, train_dit_stage, train_enf,
    train_latent_classifier, trajectory)
from enf_lib.experiments.runner import Run
from enf_lib.latents import ContextStats
from enf_lib.model import count_params
from enf_lib.sample_quality import fid_or_none


def run(config: Config, run: Run) -> dict[str, Any]:
    """All stages; returns what ``metrics.json`` holds (see the module docstring)."""
    c = config
    train_images, train_labels = load_cifar10("train", limit=c.data.num_train)
    test_images, test_labels = load_cifar10("test", limit=c.data.num_test)
    run.use_data(train_images, train_labels, test_images, test_labels)

    # Stages 1 and 2: the ENF and the latents.
    learner, state, latents = train_enf(run, c, train_images, test_images)
    (z_train, psnr_train), (z_test, psnr_test) = latents["train"], latents["test"]
    results: dict[str, Any] = {
        "recon_psnr_test": float(psnr_test.mean()), "recon_psnr_train": float(psnr_train.mean()),
        "num_train": c.data.num_train, "num_test": c.data.num_test}
    if c.pose_study:
        results["pose_study"] = pose_study(run, c, learner, state, train_images, test_images,
                                           psnr_test, z_test)

    # Stage 3: the DiT on normalised contexts, conditioned on class and pose.
    stats = ContextStats.from_latents(z_train)
    tokens = {"train": np.asarray(stats.normalize(z_train).context),
              "test": np.asarray(stats.normalize(z_test).context)}
    model, dit_log = train_dit_stage(run, dataclasses.replace(c.diffusion, dit=c.dit),
                                     tokens["train"], train_labels, z_train.pose,
                                     reads="fit_train", seed=c.seed)
    results["dit_params"] = count_params(model)
    results["dit_final_loss"] = dit_log.history["loss"][-1][1]

    # Stage 4: class-conditional samples, decoded, and one trajectory per class.
    s, key = c.sampling, jax.random.key(c.seed + 10)
    samples = draw_samples(run, c, model, learner, state, stats, key)
    results["sampling"] = {
        "num_samples": len(samples["labels"]), "num_steps": s.num_steps, "method": s.method,
        "guidance_scale": s.guidance_scale, **samples["timing"]}
    run.save_figure(sample_grid_figure(samples["images"], samples["labels"], per_row=10),
                    "samples")
    frames = trajectory(run, c, model, learner, state, stats, samples["init"], key)
    run.save_figure(trajectory_figure(frames, np.linspace(0, 1, s.snapshots), class_labels(1)),
                    "trajectory")

    # Stage 5: offline quality.
    clf = train_latent_classifier(run, c, stats.normalize(z_train), train_labels)
    real = classifier_accuracy(clf, tokens["test"], z_test, test_labels)
    fake = classifier_accuracy(clf, samples["tokens"], samples["init"], samples["labels"])
    results["classifier"] = {"kind": c.evaluation.classifier_kind,
                             "accuracy_real_test": real["accuracy"],
                             "per_class_real_test": real["per_class"],
                             "accuracy_generated": fake["accuracy"],
                             "per_class_generated": fake["per_class"]}
    sweep_acc, sweep_images = guidance_sweep(run, c, model, clf, learner, state, stats, key)
    results["guidance_sweep"] = {f"{w:g}": a for w, a in sweep_acc.items()}
    run.save_figure(guidance_figure(sweep_images, sweep_acc), "guidance")

    results["nearest_neighbours"], shown, nearest = memorisation(
        run, c, samples, tokens, train_images, test_images)
    run.save_figure(neighbours_figure(samples["images"][shown],
                                      train_images[nearest].astype(np.float32) / 255.0),
                    "neighbours")

    fid, note = (None, "disabled in the config")
    if c.evaluation.fid:
        with run.stage("fid"):
            fid, note = fid_or_none(samples["images"], test_images.astype(np.float32) / 255.0)
        run.log(f"[{run.experiment}] FID: {note}")
    # FID falls as the sample grows: it is comparable only at equal sample sizes.
    results["fid"], results["fid_note"] = fid, note
    results["fid_samples"] = {"generated": len(samples["images"]), "real": len(test_images)}
    plt.close("all")
    return run.write_metrics(results)


__all__ = ["CIFAR10_CLASSES", "NAME", "NUM_CLASSES", "PROFILES", "Config", "DataConfig",
           "DiffusionConfig", "EvalConfig", "SamplingConfig", "class_labels",
           "classifier_accuracy", "decode_tokens", "dit_optimizer", "generate", "run",
           "sampling_poses", "train_dit_stage"]
