"""The embedded data set: synthetic videos of articulated people, in PoseTrack18 format.

PoseTrack itself can no longer be downloaded, so runs, tests and demos use this generated data
by default. Each video shows 1..3 people (3D skeletons with the 17 PoseTrack18 joints and
capsule bodies) walking, waving, bending, turning, squatting or exercising, some running,
jumping, swinging or spinning, maybe a passer-by crossing in front, in front of a textured
backdrop, seen by a panning, dollying, maybe zooming and shaking pinhole camera, with
occluding objects, long exposures integrated from sub-frame renders, defocus and low-bitrate
encodes (each at a rate of ``SyntheticConfig``; the ``hard`` preset raises them all). Labels
follow what is drawn: a joint is labeled only where it is visible; ears are never labeled, as
in PoseTrack18. 3D joints, cameras and the conditions of every frame and joint are saved
beside the annotations (``load_sidecar``).

Generate from the command line::

  python -m posewarper_jax.data.synthetic --root DIR [--preset tiny|default|hard|large]
      [--seed N]

or from code with ``generate(root, "default")`` (returns at once when ``root`` already holds
the same data set) and read it back with ``load_split(root, "train")``.
"""

from posewarper_jax.data.synthetic.config import (
    GENERATOR_VERSION,
    PRESETS,
    SyntheticConfig,
    get_config,
)
from posewarper_jax.data.synthetic.dataset import (
    SPLITS,
    contact_sheet,
    default_root,
    generate,
    load_sidecar,
    load_split,
    matches,
    video_name,
)

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "SPLITS",
    "SyntheticConfig",
    "contact_sheet",
    "default_root",
    "generate",
    "get_config",
    "load_sidecar",
    "load_split",
    "matches",
    "video_name",
]
