"""The settings of a run: the config, read once into small frozen, typed records.

``experiment.settings(config)`` checks an ``ml_collections`` config (``ConfigError`` naming
the field) and turns it into ``Settings``; the job, the trainer and the commands that apply a
trained model take these records and never the config itself. A config written before a
field existed gets the field's old behaviour here (HRNet's heatmap coding, every validation
video scored, ...), so that nothing below has to know.

``Settings.config_json`` keeps the config as JSON: ``WORKDIR/config.json`` and the report's
``config`` section are the config exactly as given.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``config.data``: the data set, its annotations and the evaluation's boxes.

    ``synthetic`` is the ``SyntheticConfig`` that ``synthetic_preset``, ``synthetic_seed`` and
    ``synthetic_overrides`` give (``kind == "synthetic"``), else None.
    """

    kind: str
    root: str
    train_ann: str
    val_ann: str
    val_detections: str
    detection_threshold: float
    skip_bad_images: bool
    synthetic_preset: str
    synthetic_seed: int
    synthetic_overrides: str
    synthetic: Any = None


@dataclasses.dataclass(frozen=True)
class SparseSettings:
    """``config.sparse``: which training labels are kept (every k-th frame, or V x N)."""

    every_k: int
    num_videos: int
    frames_per_video: int
    seed: int


@dataclasses.dataclass(frozen=True)
class InputSettings:
    """``config.input``: crops, heatmap targets, augmentation and the data readers."""

    image_size: tuple[int, int]
    sigma: float
    target_encoding: str
    support_range: int
    num_workers: int
    read_threads: int
    frame_cache_mb: int
    flip_prob: float
    rotation_factor: float
    rotation_prob: float
    scale_factor: float
    half_body_prob: float


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """``config.model``: the HRNet variant, the warping head and the weights to start from."""

    backbone: str
    pretrained: str
    head_channels: int
    head_blocks: int
    dilations: tuple[int, ...]
    backbone_bn: str
    dtype: str
    deform_impl: str


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """One training stage's recipe (``config.stage1``, ``config.stage2``, the pre-training).

    ``target`` is what a warping-head stage compares the warped heatmaps with
    (``training.STAGE2_TARGETS``); an HRNet stage has ``ground_truth``. ``unlabeled_reach``
    (stage 2 only): A may also be an unlabeled frame this close to a labeled one
    (``PipelineConfig.unlabeled_reach``).
    """

    epochs: int
    max_steps: int
    batch_size: int
    lr: float
    schedule: str
    lr_steps: tuple[float, ...]
    lr_factor: float
    warmup_steps: int
    weight_decay: float
    target: str = "ground_truth"
    unlabeled_reach: int = 0


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """``config.pretrain``: the fully labeled set HRNet pre-trains on, and its recipe.

    ``root`` is resolved: ``pretrain.root``, or ``data.root`` + "_stills" when not given.
    """

    data: str
    root: str
    ann: str
    synthetic_preset: str
    stage: StageSettings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """``config.eval``: what the evaluation scores and how it decodes heatmaps."""

    batch_size: int
    propagation_every_k: int
    propagation_reach: int
    flip_test: bool
    decoding: str
    split: str
    propagation_path: str = "direct"


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    """``config.augment``: the pseudo labels and HRNet's retraining on them."""

    deltas: tuple[int, ...]
    min_confidence: float
    match_stage1_steps: bool


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run reads from its config (module docstring)."""

    data: DataSettings
    sparse: SparseSettings
    input: InputSettings
    model: ModelSettings
    pretrain: PretrainSettings | None
    stage1: StageSettings
    stage2: StageSettings
    eval: EvalSettings
    augment: AugmentSettings
    seed: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    evaluate: bool
    config_json: str = dataclasses.field(default="{}", repr=False)
    stop_after: str = ""  # "" or the training phase after which the job stops

    @property
    def pretraining(self) -> bool:
        """Whether the job pre-trains HRNet: ``pretrain.data`` names a data set and no
        ``model.pretrained`` checkpoint replaces the phase."""
        p = self.pretrain
        return p is not None and p.data != "none" and not self.model.pretrained

    def stage(self, name: str) -> StageSettings:
        """The recipe of the training stage ``name``: ``pretrain``, ``stage1``, ``stage2``,
        or ``stage1_augmented`` (trained with stage 1's recipe)."""
        if name == "pretrain":
            if self.pretrain is None:
                raise KeyError("the config has no pretrain section")
            return self.pretrain.stage
        if name in ("stage1", "stage1_augmented"):
            return self.stage1
        if name == "stage2":
            return self.stage2
        raise KeyError(f"no training stage {name!r}")
