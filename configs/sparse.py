r"""PoseWarper from sparse labels: stage 1 (HRNet), stage 2 (warping head), evaluation.

The default runs the whole experiment on the embedded synthetic video data set on a CPU:

  python -m posewarper_jax.main --config configs/sparse.py --workdir runs/sparse

It generates the data set (or reuses it), keeps every 7th frame's labels of the training
videos (the rest are held back), starts a small HRNet from the backbone shipped in
posewarper_jax/weights (pre-trained on the synthetic ``stills``: the paper's COCO
initialisation, made here), fine-tunes it on the labeled frames (stage 1), trains the warping
head with the backbone frozen (stage 2), then evaluates propagation, detection, aggregation,
tracking and pseudo-label augmentation on the ``test`` validation videos and writes
``report.md``. The README's "Results" gives its figures over three draws of the data and its
time on 2 CPU cores. ``python -m posewarper_jax.apps.diagnostics`` (same flags) breaks the
propagation result down.

Variants (``configs/sparse.py:key=value,...``):

  runlocal        a few steps of each stage, for a smoke test (about a minute).
  scratch         no pose pre-training: stage 1 trains HRNet from random weights (50 epochs).
  data=posetrack18|posetrack17, root=DIR
                  a real data set: DIR holds ``images/`` and ``annotations/{train,val}``
                  (PoseTrack18) or ``annotations/{train,val}`` annolist files (PoseTrack17).
  paper           the paper's setting: HRNet-W48 at 384x288, the full warping head
                  (20 blocks x 128 channels, dilations 3,6,12,18,24), 8 pairs per device.
  gpu             the default experiment (same data, recipe, coding and evaluation) with
                  the paper's network and resolution: HRNet-W48 at 384x288, 96x72 heatmaps
                  (sigma 3), the full warping head; W48 is pre-trained on the stills in the
                  job (no W48 backbone is shipped); sized for one GPU.
  smoke           with any of the above: the tiny data set and 4 steps of every stage, at the
                  variant's model and resolution (checks that a configuration runs end to end).
  backbone=NAME   HRNet variant: tiny, small, w32, w48.
  packaged        (on by default) HRNet ``small`` starts from the backbone shipped in
                  posewarper_jax/weights (its .json says how it was made);
                  ``packaged=false`` pre-trains it in the job instead (``pretrain.*``,
                  2000 steps on the stills). Off for other backbones and ``scratch``.
  V=INT, N=INT    V labeled videos x N labeled frames per video (instead of every 7th frame).

Single fields: ``--config.stage2.lr=3e-4``, ``--config.model.dilations='(3, 6)'``, ...

Sweeps: ``python launch/sweep.py --config configs/sparse.py --sweep dilations`` prints one
command per run of ``get_sweep()``: the paper's dilation ablation and its V/N grids.
"""

import ml_collections as mlc

from posewarper_jax import config_args

PAPER_DILATIONS = (3, 6, 12, 18, 24)


# The variants' arguments and their defaults (``config_args.parse_arg``): a bool is a switch
# (``runlocal``, ``runlocal=true``; off with ``runlocal=false`` or ``=0``); ``root`` and
# ``backbone`` default to the variant's own; V and N are None unless given.
ARGS = dict(
    runlocal=False, scratch=False, data="synthetic", root="", paper=False, gpu=False,
    smoke=False, backbone="", packaged=True, V=int, N=int,
)  # fmt: skip
KNOWN_ARGS = tuple(ARGS)


def parse_arg(arg):
    """'runlocal,V=50,N=2' -> every argument of ``ARGS``, typed; ValueError naming the
    argument for an unknown one or a bad value."""
    return config_args.parse_arg(arg, where="configs/sparse.py", **ARGS)


def get_config(arg=None):
    args = parse_arg(arg)

    c = mlc.ConfigDict()
    c.seed = 0

    # ------------------------------------------------------------------ data
    c.data = mlc.ConfigDict()
    c.data.kind = args.data  # synthetic | posetrack18 | posetrack17
    c.data.root = args.root or "data/synthetic"
    c.data.synthetic_preset = "default"
    c.data.synthetic_seed = 0
    # SyntheticConfig fields replaced, e.g. "fps=6,num_train_videos=48" (use another data.root:
    # a root holding a different synthetic config is regenerated).
    c.data.synthetic_overrides = ""
    # Annotation locations, relative to data.root unless absolute.
    c.data.train_ann = "annotations/train"
    c.data.val_ann = "annotations/val"
    # Detected person boxes for evaluation (COCO results format); empty: ground-truth boxes.
    c.data.val_detections = ""
    c.data.detection_threshold = 0.2
    # A missing or corrupt image stops the run naming it (False), or is skipped and counted
    # in the report (True): a training record is replaced by the next one, an evaluation
    # frame left out.
    c.data.skip_bad_images = False

    # ------------------------------------------------------------------ sparse labels
    c.sparse = mlc.ConfigDict()
    c.sparse.every_k = 7  # keep every k-th labeled frame of each video (0: use V x N below)
    c.sparse.num_videos = 0  # V (0: all videos)
    c.sparse.frames_per_video = 0  # N
    c.sparse.seed = 0
    if args.V is not None or args.N is not None:
        c.sparse.every_k = 0
        c.sparse.num_videos = 0 if args.V is None else args.V
        c.sparse.frames_per_video = 1 if args.N is None else args.N

    # ------------------------------------------------------------------ input pipeline
    c.input = mlc.ConfigDict()
    c.input.image_size = (128, 96)  # (H, W) crop
    c.input.sigma = 1.0  # Gaussian sigma in heatmap pixels (3 at 96x72 heatmaps)
    # Targets centred on each joint's exact sub-pixel position ("subpixel") or on the rounded
    # heatmap pixel as HRNet ("integer"). At 32x24 heatmaps one pixel is about 0.4 heads,
    # so rounding (and the quarter-pixel decoding, eval.decoding) costs real accuracy.
    c.input.target_encoding = "subpixel"
    c.input.support_range = 2  # B drawn from [t_A - R, t_A + R]
    c.input.num_workers = 0  # Grain decoding processes (0: decode in the main process)
    c.input.read_threads = 2
    # Decoded frames kept in memory per process (MiB; 0: decode every read): training and
    # evaluation read the same frames many times.
    c.input.frame_cache_mb = 1024
    c.input.flip_prob = 0.5
    c.input.rotation_factor = 45.0
    c.input.rotation_prob = 0.6
    c.input.scale_factor = 0.35
    c.input.half_body_prob = 0.3

    # ------------------------------------------------------------------ model
    c.model = mlc.ConfigDict()
    c.model.backbone = args.backbone or "small"
    c.model.pretrained = ""  # an Orbax checkpoint written by `python -m posewarper_jax.convert`
    c.model.head_channels = 32
    c.model.head_blocks = 4
    # At the CPU default's 32x24 heatmaps a dilation of 18 or 24 puts 6 of the 9 taps off
    # the map; the paper's (3, 6, 12, 18, 24) is the ``paper`` variant and the sweep below.
    c.model.dilations = (3, 6, 12)
    c.model.backbone_bn = "frozen"  # frozen: running stats kept; batch: as the original release
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    # Deformable convolutions: auto (a fused Pallas kernel on GPUs, jnp gathers elsewhere),
    # xla (jnp gathers everywhere) or pallas; the same function either way.
    c.model.deform_impl = "auto"

    # ------------------------------------------------------------------ training
    def stage(epochs, lr, lr_steps, batch_size):
        s = mlc.ConfigDict()
        s.epochs = epochs
        s.max_steps = 0  # >0 caps the stage's steps (smoke tests)
        s.batch_size = batch_size  # global batch
        s.lr = lr
        s.schedule = "step"  # step | cosine
        s.lr_steps = lr_steps  # epochs at which the LR is multiplied by lr_factor
        s.lr_factor = 0.1
        s.warmup_steps = 0
        s.weight_decay = 0.0
        return s

    # Pose pre-training of HRNet before stage 1, the paper's COCO initialisation made here:
    #   synthetic  the ``stills`` synthetic set (2048 labeled frames of 128 other clips),
    #              generated into ``pretrain.root`` (default: data.root + "_stills");
    #   coco       a COCO keypoints file ``pretrain.ann`` with its images under pretrain.root;
    #   none       stage 1 starts from model.pretrained, or from random weights.
    # ``model.pretrained`` (converted COCO weights) replaces it: the phase is then skipped.
    c.pretrain = stage(epochs=0, lr=1e-3, lr_steps=(), batch_size=16)
    c.pretrain.max_steps = 2000
    c.pretrain.schedule = "cosine"
    c.pretrain.data = "synthetic" if c.data.kind == "synthetic" else "none"
    c.pretrain.root = ""
    c.pretrain.ann = ""
    c.pretrain.synthetic_preset = "stills"

    # Stage 1 fine-tunes the pre-trained HRNet on the labeled frames (the paper's recipe).
    c.stage1 = stage(epochs=10, lr=1e-4, lr_steps=(5, 7), batch_size=16)
    # Stage 2 for 40 epochs (600 steps): the paper's 20 epochs ran over about ten times as
    # many labeled frames, and on the default's 109 frames the head learns the motion slowly.
    # 80 epochs do better but do not fit the 15-minute CPU budget: on the `dev` videos
    # (draw 0, the shipped backbone) propagation mAP 69.9 at 40 epochs, 71.3 at 80 (README).
    c.stage2 = stage(epochs=40, lr=1e-3, lr_steps=(20, 30), batch_size=16)
    if args.scratch:
        # No pre-training: HRNet learns from random weights on the labeled frames alone.
        c.pretrain.data = "none"
        c.stage1 = stage(epochs=50, lr=1e-3, lr_steps=(35, 45), batch_size=16)

    c.checkpoint_every = 100  # steps
    c.keep_checkpoints = 2
    c.log_every = 20

    # ------------------------------------------------------------------ evaluation
    c.evaluate = True  # after training: propagation, detection, augmentation, report
    # "" runs every phase; "pretrain", "stage1" or "stage2" stops the job after that phase
    # (e.g. a long pre-training whose exported backbone other runs take as model.pretrained).
    c.stop_after = ""
    c.eval = mlc.ConfigDict()
    c.eval.batch_size = 32
    c.eval.propagation_every_k = 7  # validation labels kept for propagation: every 7th frame
    c.eval.propagation_reach = 3  # |t_B - t_A| <= 3
    # Flip test for every network prediction (PoseWarper, HRNet, aggregation, pseudo labels):
    # HRNet's evaluation uses it; the original PoseWarper release declared it but never did
    # (the ``paper`` variant keeps it off, for parity).
    c.eval.flip_test = True
    # Heatmap decoding: "dark" (sub-pixel maximum of the smoothed log-heatmap, DARK) or
    # "quarter" (HRNet's argmax + quarter-pixel step, the original release).
    c.eval.decoding = "dark"
    # The validation videos scored (posewarper_jax.data.splits: a fixed rule on the video
    # names halves them into dev and test). The report scores "test"; settings, ablations and
    # diagnostics are chosen on "dev" (--config.eval.split=dev); "all": every video.
    c.eval.split = "test"
    # PoseWarper propagation: "chained" carries the labels frame by frame (A -> A+1 -> ... ->
    # B, as the Farneback baseline chains its flows), "direct" warps A onto B in one step
    # (the paper's). Chosen on `dev` (README, "Choices made on dev"); the augmentation's
    # pseudo labels keep the direct warp (their min_confidence is a direct map maximum).
    c.eval.propagation_path = "chained"

    # ------------------------------------------------------------------ augmentation
    c.augment = mlc.ConfigDict()
    c.augment.deltas = (-3, -2, -1, 1, 2, 3)  # label the frames t +- 1..3 of each labeled t
    c.augment.min_confidence = 0.2  # keep pseudo-labeled joints above this confidence
    # Retrain HRNet on real + pseudo labels for as many steps as stage 1 had (the same
    # compute; False: stage1.epochs epochs of the larger set, as the paper).
    c.augment.match_stage1_steps = True

    # ------------------------------------------------------------------ variants
    if args.paper or args.gpu:
        _paper_network(c, args)
    if args.paper:
        # The paper's heatmap coding (HRNet's) and evaluation, for parity with its numbers.
        c.input.target_encoding = "integer"
        c.eval.decoding = "quarter"
        c.eval.flip_test = False
        c.eval.propagation_path = "direct"
        c.stage1 = stage(epochs=10, lr=1e-4, lr_steps=(5, 7), batch_size=64)
        c.stage2 = stage(epochs=20, lr=1e-4, lr_steps=(10, 15), batch_size=64)
        c.pretrain.batch_size = 64
        c.checkpoint_every = 1000
        c.log_every = 100
    if args.gpu:
        c.eval.batch_size = 64
        c.checkpoint_every = 500
    if args.smoke or args.runlocal:
        # The tiny data set in its own root (a smoke test leaves the default's data sets
        # alone) and a few steps of every stage.
        c.data.synthetic_preset = "tiny"
        c.data.root = args.root or "data/synthetic_tiny"
        c.pretrain.synthetic_preset = "tiny"
        for s in (c.pretrain, c.stage1, c.stage2):
            s.max_steps = 4
            s.batch_size = 8
        c.checkpoint_every = 2
        c.log_every = 1
        c.eval.batch_size = 8
    if args.runlocal:
        c.model.backbone = args.backbone or "tiny"
        c.model.head_channels = 16
        c.model.head_blocks = 2
        c.model.dilations = (3, 6)
    if args.packaged:
        # On by default where it fits (HRNet small, not scratch); asked for by name where it
        # does not, an error.
        asked = any(item.key == "packaged" for item in config_args.split_items(arg))
        if c.model.backbone == "small" and not args.scratch:
            from posewarper_jax import weights

            c.model.pretrained = weights.path("hrnet_small_stills")
        elif asked:
            what = "scratch" if args.scratch else f"HRNet {c.model.backbone!r}"
            raise ValueError(
                f"configs/sparse.py: packaged holds HRNet 'small' weights, not for {what}"
            )
    # What stage 2 compares the warped B with: ground_truth (A's labels, the paper) or backbone
    # (the frozen backbone's heatmaps of A: self-supervised, the head learns motion only).
    c.stage2.target = "ground_truth"
    # A of a stage-2 pair is a labeled frame (0, the paper), or also an unlabeled frame up to
    # this many frames from one, with the backbone's maps of A as its target (the boxes of the
    # nearest labeled frame carried over). The stage's steps stay those of its labeled frames.
    c.stage2.unlabeled_reach = 0
    return c


def _paper_network(c, args):
    """HRNet-W48 (or ``backbone=``) at 384x288 with 96x72 heatmaps and the paper's head."""
    c.model.backbone = args.backbone or "w48"
    c.model.head_channels = 128
    c.model.head_blocks = 20
    c.model.dilations = PAPER_DILATIONS
    c.input.image_size = (384, 288)
    c.input.sigma = 3.0
    c.input.num_workers = 8


def get_sweep(arg=None):
    """Named sweeps: each a list of ``{config field: value}`` overrides, one per run."""
    del arg
    dilations = [PAPER_DILATIONS[:n] for n in range(1, len(PAPER_DILATIONS) + 1)]
    return {
        # The paper's ablation: (3), (3, 6), ..., (3, 6, 12, 18, 24).
        "dilations": [{"model.dilations": d} for d in dilations],
        # Augmentation grid: V in {100, 175, 250} with N = 1, and V = 50 with N in {1, 2, 4}.
        "vn": [
            {"sparse.every_k": 0, "sparse.num_videos": v, "sparse.frames_per_video": n}
            for v, n in [(100, 1), (175, 1), (250, 1), (50, 1), (50, 2), (50, 4)]
        ],
    }
