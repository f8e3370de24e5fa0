"""enf_lib: Equivariant Neural Fields in JAX, the library behind the ENF course.

The pieces, in the order the course builds them:

* :mod:`enf_lib.coordinates` -- pixels to coordinates in ``[-1, 1]^2`` and back.
* :mod:`enf_lib.geometry` -- bi-invariants and the groups they respect.
* :mod:`enf_lib.latents` -- the latent point cloud (poses, contexts, windows).
* :mod:`enf_lib.model` -- the equivariant cross-attention decoder.
* :mod:`enf_lib.fitting` -- inner loop, MAML / Meta-SGD outer step, fitting latents, PSNR.
* :mod:`enf_lib.training` -- training loops (meta-learning and supervised) with checkpoints.
* :mod:`enf_lib.datasets`, :mod:`enf_lib.ombria`, :mod:`enf_lib.synthetic` -- CIFAR-10, the
  OMBRIA flood tiles, and synthetic images.
* :mod:`enf_lib.classifiers`, :mod:`enf_lib.segmentation`, :mod:`enf_lib.diffusion` -- the
  downstream models of Part II, and :mod:`enf_lib.metrics` for scoring classifiers.
* :mod:`enf_lib.experiments` -- the three full experiments, also runnable as scripts.
"""

from importlib import metadata

from enf_lib.config import ENFConfig, FitConfig, profile_from_env
from enf_lib.coordinates import coordinate_grid, coords_to_pixels, pixels_to_coords
from enf_lib.fitting import MetaLearner, MetaState, psnr
from enf_lib.geometry import BI_INVARIANTS, get_bi_invariant
from enf_lib.latents import Latents, init_latents, init_latents_batch
from enf_lib.model import EquivariantNeuralField, functional

__all__ = [
    "BI_INVARIANTS", "ENFConfig", "EquivariantNeuralField", "FitConfig", "Latents",
    "MetaLearner", "MetaState", "coordinate_grid", "coords_to_pixels", "functional",
    "get_bi_invariant", "init_latents", "init_latents_batch", "pixels_to_coords",
    "profile_from_env", "psnr",
]
__version__ = metadata.version("enf_lib")
