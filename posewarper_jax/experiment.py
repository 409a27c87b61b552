"""From an ml_collections config to the objects of a run: settings, data, pipeline, model.

Only this module reads the config: ``settings(config)`` checks it (``validate``: a bad value
fails before any work, with the field named) and reads it once into ``settings.Settings``,
which the job, the trainer and the commands take. The functions below take those settings
(or, for tests and one-off scripts, a config, read into settings on the way in).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import ml_collections as mlc

from posewarper_jax import storage
from posewarper_jax.cli import ExpectedError
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data import splits, transforms
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.models.hrnet import HRNET_VARIANTS, get_hrnet_config
from posewarper_jax.models.posewarper import BACKBONE_BN_MODES, PoseWarper
from posewarper_jax.models.warping import WarpingHeadConfig
from posewarper_jax.ops import IMPLS
from posewarper_jax.ops.heatmaps import DECODINGS
from posewarper_jax.settings import (
    AugmentSettings,
    DataSettings,
    EvalSettings,
    InputSettings,
    ModelSettings,
    PretrainSettings,
    Settings,
    SparseSettings,
    StageSettings,
)
from posewarper_jax.training import STAGE2_TARGETS

DATA_KINDS = ("synthetic", "posetrack18", "posetrack17")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SCHEDULES = ("step", "cosine")
PRETRAIN_DATA = ("none", "synthetic", "coco")
STOP_AFTER = ("", "pretrain", "stage1", "stage2")  # ``stop_after``: the training phases


class ConfigError(ValueError, ExpectedError):
    """A config value that cannot work; the message names the field."""


def _fail(field: str, value: Any, why: str):
    raise ConfigError(f"config.{field}={value!r}: {why}")


def _checked(query, field: str, path: str) -> bool:
    """``query(path)`` (``storage.exists``, ...); a store that cannot be reached (a bucket
    without credentials, a missing bucket) fails naming the config field."""
    try:
        return query(path)
    except storage.StorageError as err:
        _fail(field, path, str(err).partition(": ")[2] or str(err))


Config = Settings | mlc.ConfigDict  # what the functions below read


def data_path(config: Config, rel: str) -> str:
    """``rel`` resolved against ``config.data.root`` unless it is absolute."""
    if os.path.isabs(rel) or storage.is_remote(rel):
        return rel
    return storage.join(config.data.root, rel)


# ----------------------------------------------------------------------------- settings


def settings(config: mlc.ConfigDict, *, check: bool = True) -> Settings:
    """The run's ``Settings``, read once from ``config``; ``check``: ``validate`` it first.

    Fields a config written before they existed lacks get their old behaviour
    (``heatmap_coding``, ``eval_split``, ...).

    Raises:
      ConfigError: (``check``) a value that cannot work, the field named.
    """
    if check:
        validate(config)
    d, s, i, m, e, a = (config[k] for k in ("data", "sparse", "input", "model", "eval", "augment"))
    encoding, decoding = heatmap_coding(config)
    kind = str(d.kind)
    data = DataSettings(
        kind=kind,
        root=str(d.root),
        train_ann=str(d.train_ann),
        val_ann=str(d.val_ann),
        val_detections=str(d.val_detections or ""),
        detection_threshold=float(d.detection_threshold),
        skip_bad_images=bool(d.get("skip_bad_images", False)),
        synthetic_preset=str(d.get("synthetic_preset", "default")),
        synthetic_seed=int(d.get("synthetic_seed", 0)),
        synthetic_overrides=str(d.get("synthetic_overrides") or ""),
        synthetic=synthetic_config(config) if kind == "synthetic" else None,
    )
    pretrain = None
    if config.get("pretrain"):
        p = config.pretrain
        pretrain = PretrainSettings(
            data=str(p.data),
            root=pretrain_root(config),
            ann=str(p.get("ann", "") or ""),
            synthetic_preset=str(p.get("synthetic_preset", "stills")),
            stage=stage_settings(p),
        )
    return Settings(
        data=data,
        sparse=SparseSettings(
            every_k=int(s.every_k),
            num_videos=int(s.num_videos),
            frames_per_video=int(s.frames_per_video),
            seed=int(s.seed),
        ),
        input=InputSettings(
            image_size=tuple(int(v) for v in i.image_size),
            sigma=float(i.sigma),
            target_encoding=encoding,
            support_range=int(i.support_range),
            num_workers=int(i.num_workers),
            read_threads=int(i.read_threads),
            frame_cache_mb=int(i.frame_cache_mb),
            flip_prob=float(i.flip_prob),
            rotation_factor=float(i.rotation_factor),
            rotation_prob=float(i.rotation_prob),
            scale_factor=float(i.scale_factor),
            half_body_prob=float(i.half_body_prob),
        ),
        model=ModelSettings(
            backbone=str(m.backbone),
            pretrained=str(m.pretrained or ""),
            head_channels=int(m.head_channels),
            head_blocks=int(m.head_blocks),
            dilations=tuple(int(v) for v in m.dilations),
            backbone_bn=str(m.backbone_bn),
            dtype=str(m.dtype),
            deform_impl=str(m.get("deform_impl", "auto")),
        ),
        pretrain=pretrain,
        stage1=stage_settings(config.stage1),
        stage2=stage_settings(config.stage2),
        eval=EvalSettings(
            batch_size=int(e.batch_size),
            propagation_every_k=int(e.propagation_every_k),
            propagation_reach=int(e.propagation_reach),
            flip_test=bool(e.get("flip_test", False)),
            decoding=decoding,
            split=eval_split(config),
            propagation_path=str(e.get("propagation_path", "direct")),
        ),
        augment=AugmentSettings(
            deltas=tuple(int(v) for v in a.deltas),
            min_confidence=float(a.min_confidence),
            match_stage1_steps=bool(a.match_stage1_steps),
        ),
        seed=int(config.seed),
        checkpoint_every=int(config.checkpoint_every),
        keep_checkpoints=int(config.keep_checkpoints),
        log_every=int(config.log_every),
        evaluate=bool(config.get("evaluate", True)),
        config_json=config.to_json_best_effort(indent=2),
        stop_after=str(config.get("stop_after", "")),
    )


def stage_settings(stage: mlc.ConfigDict) -> StageSettings:
    """One stage's section of the config (``config.stage1``, ...) as ``StageSettings``."""
    return StageSettings(
        epochs=int(stage.epochs),
        max_steps=int(stage.max_steps),
        batch_size=int(stage.batch_size),
        lr=float(stage.lr),
        schedule=str(stage.schedule),
        lr_steps=tuple(stage.lr_steps),
        lr_factor=float(stage.lr_factor),
        warmup_steps=int(stage.warmup_steps),
        weight_decay=float(stage.weight_decay),
        target=str(stage.get("target", "ground_truth")),
        unlabeled_reach=int(stage.get("unlabeled_reach", 0)),
    )


def _settings(config: Config) -> Settings:
    """``config`` as ``Settings`` (read without the checks when it is a config)."""
    return config if isinstance(config, Settings) else settings(config, check=False)


def validate(config: mlc.ConfigDict) -> None:
    """Raises ``ConfigError`` naming the first field whose value cannot work.

    Checks that need the data (V larger than the number of videos) happen in
    ``load_training_data``.
    """
    d = config.data
    if d.kind not in DATA_KINDS:
        _fail("data.kind", d.kind, f"must be one of {DATA_KINDS}")
    if d.kind != "synthetic":
        if not _checked(storage.isdir, "data.root", d.root):
            _fail("data.root", d.root, "is not a directory")
        for field in ("train_ann", "val_ann"):
            path = data_path(config, d[field])
            if not _checked(storage.exists, f"data.{field}", path):
                _fail(f"data.{field}", d[field], f"does not exist (looked for {path})")
    if d.val_detections and not _checked(storage.isfile, "data.val_detections", d.val_detections):
        _fail("data.val_detections", d.val_detections, "is not a file")
    if d.kind == "synthetic":
        synthetic_config(config)

    s = config.sparse
    for field in ("every_k", "num_videos", "frames_per_video"):
        if s[field] < 0:
            _fail(f"sparse.{field}", s[field], "must be >= 0")
    if s.every_k and s.frames_per_video:
        _fail("sparse.frames_per_video", s.frames_per_video, "give every_k or N, not both")

    i = config.input
    if i.sigma <= 0:
        _fail("input.sigma", i.sigma, "must be > 0")
    if len(i.image_size) != 2 or any(v <= 0 or v % 32 for v in i.image_size):
        _fail("input.image_size", i.image_size, "must be (H, W), each a positive multiple of 32")
    if i.support_range < 0:
        _fail("input.support_range", i.support_range, "must be >= 0")
    cache = i.get("frame_cache_mb", 0)
    if isinstance(cache, bool) or not isinstance(cache, int) or cache < 0:
        _fail("input.frame_cache_mb", cache, "must be an integer >= 0 (MiB; 0: no cache)")
    encodings = transforms.TARGET_ENCODINGS
    encoding, decoding = heatmap_coding(config)
    if encoding not in encodings:
        _fail("input.target_encoding", encoding, f"must be one of {encodings}")
    if decoding not in DECODINGS:
        _fail("eval.decoding", decoding, f"must be one of {DECODINGS}")
    if eval_split(config) not in splits.SPLITS:
        _fail("eval.split", eval_split(config), f"must be one of {splits.SPLITS}")

    m = config.model
    if m.backbone not in HRNET_VARIANTS:
        _fail("model.backbone", m.backbone, f"must be one of {sorted(HRNET_VARIANTS)}")
    if len(m.dilations) == 0:
        _fail("model.dilations", m.dilations, "must name at least one dilation rate")
    if any(int(v) != v or v < 1 for v in m.dilations):
        _fail("model.dilations", m.dilations, "must be positive integers")
    if m.head_blocks < 1 or m.head_channels < 1:
        _fail("model.head_blocks", (m.head_blocks, m.head_channels), "must be positive")
    if m.backbone_bn not in BACKBONE_BN_MODES:
        _fail("model.backbone_bn", m.backbone_bn, f"must be one of {BACKBONE_BN_MODES}")
    if m.dtype not in DTYPES:
        _fail("model.dtype", m.dtype, f"must be one of {sorted(DTYPES)}")
    if m.get("deform_impl", "auto") not in IMPLS:
        _fail("model.deform_impl", m.deform_impl, f"must be one of {IMPLS}")
    if m.pretrained and not _checked(storage.exists, "model.pretrained", m.pretrained):
        _fail("model.pretrained", m.pretrained, "does not exist")

    stages = ["stage1", "stage2"]
    if pretraining(config):
        stages.insert(0, "pretrain")
        _validate_pretrain(config)
    elif config.get("pretrain") and config.pretrain.data not in PRETRAIN_DATA:
        _fail("pretrain.data", config.pretrain.data, f"must be one of {PRETRAIN_DATA}")
    for name in stages:
        st = config[name]
        if st.epochs <= 0 and st.max_steps <= 0:
            _fail(f"{name}.epochs", st.epochs, "must be > 0 (or set max_steps)")
        if st.batch_size <= 0:
            _fail(f"{name}.batch_size", st.batch_size, "must be > 0")
        if not st.lr > 0:
            _fail(f"{name}.lr", st.lr, "must be > 0")
        if st.schedule not in SCHEDULES:
            _fail(f"{name}.schedule", st.schedule, f"must be one of {SCHEDULES}")
        if st.warmup_steps < 0:
            _fail(f"{name}.warmup_steps", st.warmup_steps, "must be >= 0")
    target = config.stage2.get("target", "ground_truth")
    if target not in STAGE2_TARGETS:
        _fail("stage2.target", target, f"must be one of {STAGE2_TARGETS}")
    from posewarper_jax.apps.propagation import PATHS as PROPAGATION_PATHS

    path = config.eval.get("propagation_path", "direct")
    if path not in PROPAGATION_PATHS:
        _fail("eval.propagation_path", path, f"must be one of {PROPAGATION_PATHS}")
    reach = config.stage2.get("unlabeled_reach", 0)
    if isinstance(reach, bool) or not isinstance(reach, int) or reach < 0:
        _fail("stage2.unlabeled_reach", reach, "must be an integer >= 0")
    if config.checkpoint_every <= 0:
        _fail("checkpoint_every", config.checkpoint_every, "must be > 0")
    if config.keep_checkpoints <= 0:
        _fail("keep_checkpoints", config.keep_checkpoints, "must be > 0")
    if config.log_every <= 0:
        _fail("log_every", config.log_every, "must be > 0")
    stop = config.get("stop_after", "")
    if stop not in STOP_AFTER:
        _fail("stop_after", stop, f"must be one of {STOP_AFTER}")
    if stop == "pretrain" and not pretraining(config):
        _fail("stop_after", stop, "the job does not pre-train (pretrain.data or model.pretrained)")
    check_batch_sizes(config)


def check_batch_sizes(config: mlc.ConfigDict, num_devices: int | None = None) -> None:
    """Every global batch (the stages', the evaluation's) splits evenly over the devices of
    the ``data`` mesh (and so over the processes); ConfigError naming the field otherwise,
    at start instead of at the first step of that stage."""
    import jax

    n = jax.device_count() if num_devices is None else num_devices
    fields = ["stage1", "stage2"] + (["pretrain"] if pretraining(config) else [])
    sizes = {f"{name}.batch_size": config[name].batch_size for name in fields}
    if config.get("evaluate", True):
        sizes["eval.batch_size"] = config.eval.batch_size
    for field, size in sizes.items():
        if size % n:
            fit = max(n, size - size % n)
            _fail(
                field,
                size,
                f"must be a multiple of the {n} devices (each global batch is split evenly "
                f"over them); use {fit} or another multiple of {n}",
            )


def _validate_pretrain(config: mlc.ConfigDict) -> None:
    p = config.pretrain
    if p.data not in PRETRAIN_DATA:
        _fail("pretrain.data", p.data, f"must be one of {PRETRAIN_DATA}")
    if p.data == "synthetic":
        from posewarper_jax.data import synthetic

        if p.synthetic_preset not in synthetic.PRESETS:
            presets = sorted(synthetic.PRESETS)
            _fail("pretrain.synthetic_preset", p.synthetic_preset, f"must be one of {presets}")
    else:  # coco
        if not p.ann or not _checked(storage.isfile, "pretrain.ann", p.ann):
            _fail("pretrain.ann", p.ann, "must name a COCO keypoints JSON file (data=coco)")
        if not _checked(storage.isdir, "pretrain.root", pretrain_root(config)):
            _fail("pretrain.root", p.root, "must be the directory of the COCO images")


# ----------------------------------------------------------------------------- data


def pretraining(config: Config) -> bool:
    """Whether the job pre-trains HRNet: ``pretrain.data`` names a data set and no
    ``model.pretrained`` checkpoint replaces the phase."""
    if isinstance(config, Settings):
        return config.pretraining
    p = config.get("pretrain")
    return bool(p) and p.data != "none" and not config.model.pretrained


def pretrain_root(config: Config) -> str:
    """``pretrain.root``, or ``data.root`` + "_stills" for the synthetic set."""
    if isinstance(config, Settings):
        return config.pretrain.root
    return config.pretrain.get("root", "") or config.data.root.rstrip("/\\") + "_stills"


def pretrain_dataset(config: Config) -> VideoDataset:
    """The pre-training set of ``config.pretrain`` (``ensure_data`` generates the synthetic one):
    every frame labeled, all of it used."""
    from posewarper_jax.data import coco, synthetic

    p = _settings(config).pretrain
    if p.data == "coco":
        return coco.load_coco_keypoints(p.ann, p.root)
    return synthetic.load_split(p.root, "train")


def ensure_data(config: Config, *, progress: bool = True) -> None:
    """Generates the synthetic data set under ``data.root``, and the synthetic pre-training
    set (``pretrain_root``) when the job pre-trains on it, unless they are already there.
    The pre-training set labels joints as the data set does (``label_occluded``) and draws
    people as it does (``face_detail``)."""
    from posewarper_jax import cli
    from posewarper_jax.data import synthetic

    def make(field: str, root: str, cfg) -> None:
        if not synthetic.matches(root, cfg):  # an output: its folder must be writable
            try:
                folder = storage.dirname(storage.abspath(root))
                cli.check_writable_dir(root if storage.is_remote(root) else folder, "its folder")
            except cli.ExpectedError as e:
                _fail(field, root, f"cannot hold the generated data set: {e}")
        try:
            synthetic.generate(root, cfg, progress=progress)
        except ValueError as e:  # a root holding something else, named by the generator
            _fail(field, root, str(e))

    s = _settings(config)
    if s.data.kind == "synthetic":
        make("data.root", s.data.root, s.data.synthetic)
    if s.pretraining and s.pretrain.data == "synthetic":
        preset = synthetic.get_config(s.pretrain.synthetic_preset)
        if s.data.kind == "synthetic":
            d = s.data.synthetic
            preset = dataclasses.replace(
                preset, label_occluded=d.label_occluded, face_detail=d.face_detail
            )
        make("pretrain.root", s.pretrain.root, preset)


def synthetic_config(config: mlc.ConfigDict):
    """The ``SyntheticConfig`` of ``data.synthetic_preset``, ``data.synthetic_seed`` and
    ``data.synthetic_overrides`` (``"fps=6,num_train_videos=48"``: SyntheticConfig fields)."""
    from posewarper_jax import config_args
    from posewarper_jax.data import synthetic

    d = config.data
    if d.synthetic_preset not in synthetic.PRESETS:
        presets = sorted(synthetic.PRESETS)
        _fail("data.synthetic_preset", d.synthetic_preset, f"must be one of {presets}")
    fields = {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)} - {"seed"}
    overrides: dict[str, Any] = {"seed": d.synthetic_seed}
    for item in config_args.split_items(d.get("synthetic_overrides")):
        if not item.eq or item.key not in fields:
            _fail(
                "data.synthetic_overrides",
                d.synthetic_overrides,
                f"{item.text.strip()!r} is not FIELD=VALUE with FIELD one of {sorted(fields)} "
                "(the seed is data.synthetic_seed)",
            )
        default = getattr(synthetic.get_config("default"), item.key)
        try:
            overrides[item.key] = config_args.convert(item.value, default)
        except ValueError:
            _fail("data.synthetic_overrides", d.synthetic_overrides, f"bad value in {item.text!r}")
    try:
        return synthetic.get_config(d.synthetic_preset, **overrides)
    except ValueError as err:  # a SyntheticConfig check, naming its field
        _fail("data.synthetic_overrides", d.synthetic_overrides, str(err))


def load_split(config: Config, split: str) -> VideoDataset:
    """The full annotation of ``split`` ("train" or "val")."""
    from posewarper_jax.data import posetrack17, posetrack18

    d = _settings(config).data
    ann = data_path(config, d.train_ann if split == "train" else d.val_ann)
    if d.kind == "posetrack17":
        return posetrack17.load_posetrack17(ann, d.root)
    return posetrack18.load_posetrack18(ann, d.root)


def eval_split(config: Config) -> str:
    """``eval.split``: the validation videos a run scores (``data.splits``: ``test``, ``dev``
    or ``all``); ``all`` for a config written before the field existed."""
    if isinstance(config, Settings):
        return config.eval.split
    return str(config.eval.get("split", "all"))


def eval_videos(config: Config, split: str | None = None) -> VideoDataset:
    """The validation videos of ``split`` (default ``eval_split(config)``) by the fixed rule
    of ``data.splits``.

    Raises:
      ConfigError: an unknown split, or one holding no video of this validation set (a set of
        one video has no ``dev`` split).
    """
    s = _settings(config)
    split = s.eval.split if split is None else split
    if split not in splits.SPLITS:
        _fail("eval.split", split, f"must be one of {splits.SPLITS}")
    val = load_split(s, "val")
    out = splits.select(val, split)
    if not out.videos:
        _fail(
            "eval.split",
            split,
            f"no validation video of {data_path(s, s.data.val_ann)} falls in it "
            f"({len(val.videos)} video(s); {splits.RULE}); choose another split",
        )
    return out


def sparse_subset(config: Config, dataset: VideoDataset):
    """(subset, held_back) of ``dataset`` as ``config.sparse`` asks."""
    from posewarper_jax.data import sparse

    s = _settings(config).sparse
    try:
        return sparse.make_sparse_subset(
            dataset,
            num_videos=s.num_videos or None,
            frames_per_video=s.frames_per_video or None,
            every_k=s.every_k or None,
            seed=s.seed,
        )
    except ValueError as e:
        field = "sparse.num_videos" if "num_videos" in str(e) else "sparse"
        raise ConfigError(f"config.{field}: {e}") from e


# ----------------------------------------------------------------------------- pipeline


def heatmap_coding(config: Config) -> tuple[str, str]:
    """(``input.target_encoding``, ``eval.decoding``); HRNet's coding for a config without
    the fields (written before they existed)."""
    if isinstance(config, Settings):
        return config.input.target_encoding, config.eval.decoding
    return (
        str(config.input.get("target_encoding", "integer")),
        str(config.eval.get("decoding", "quarter")),
    )


def pipeline_config(config: Config, use: str, **overrides) -> pipeline_lib.PipelineConfig:
    """The input pipeline's settings for ``use``: "eval", or the training stage of that name
    ("stage1", "stage2", "pretrain", ...: its batch size, augmented and shuffled)."""
    s = _settings(config)
    i = s.input
    aug = transforms.AugmentConfig(
        flip_prob=i.flip_prob,
        rotation_factor=i.rotation_factor,
        rotation_prob=i.rotation_prob,
        scale_factor=i.scale_factor,
        half_body_prob=i.half_body_prob,
    )
    batch = s.eval.batch_size if use == "eval" else s.stage(use).batch_size
    reach = s.stage2.unlabeled_reach if use == "stage2" else 0
    kwargs = dict(
        image_size=i.image_size,
        sigma=i.sigma,
        target_encoding=i.target_encoding,
        support_range=i.support_range,
        unlabeled_reach=reach,
        aug=aug,
        augment=use != "eval",
        shuffle=use != "eval",
        batch_size=batch,
        num_workers=i.num_workers,
        read_threads=i.read_threads,
        frame_cache_mb=i.frame_cache_mb,
        seed=s.seed,
        skip_bad_images=s.data.skip_bad_images,
    )
    kwargs.update(overrides)
    return pipeline_lib.PipelineConfig(**kwargs)


# ----------------------------------------------------------------------------- model


def head_config(config: Config) -> WarpingHeadConfig:
    m = _settings(config).model
    return WarpingHeadConfig(
        channels=m.head_channels,
        num_blocks=m.head_blocks,
        dilations=m.dilations,
        dtype=DTYPES[m.dtype],
        deform_impl=m.deform_impl,
    )


def make_model(config: Config) -> PoseWarper:
    s = _settings(config)
    m = s.model
    hrnet = get_hrnet_config(m.backbone, dtype=DTYPES[m.dtype])
    head = dataclasses.replace(head_config(s), num_joints=hrnet.num_joints)
    return PoseWarper(hrnet_config=hrnet, head_config=head, backbone_bn=m.backbone_bn)
