"""The cost of one ImageNet-1k epoch, stage by stage: exact FLOP counts, GPU estimates, and
what this CPU measures (issue 30, item 3).

    python -m bench.imagenet_epoch                        # counts + estimates (~30 s: builds
                                                          # ResNet-50 to count it)
    nice -n 19 python -m bench.imagenet_epoch --measure   # + times (c) and (d) on this CPU
                                                          # (~3-4 min on 2 cores)
    python -m bench.imagenet_epoch --measure --quick      # smoke: tiny sizes, numbers mean nothing

Settings: flags/imagenet.cfg (ResNet-50 at 224 px, batch 256, faiss, ...) with ImageNet-1k's
N = 1,281,167 train and 50,000 val images and `--num_clusters` (default 1000,2000,3000: the
flagfile's k are ImageNet-100's); everything else is the config's default (center_view
clustering, the kNN monitor every epoch on the whole train split, 20 Lloyd iterations on at
most 256 points per centroid).

Stages: (a) the training step: per image a query forward + backward (3 forwards) and a key
forward (1), plus the logits against the queue; (b) the clustering: per level k-means++ seeding,
Lloyd iterations and the assignment of every image (bench.clustering_scale's exact counts),
and the acceptance; (c) the kNN monitor: a query-encoder pass over the train split (or
--knn_max_train of it) and val, the similarity matmul val x train x feature size and its top-k;
(d) the embedding pass the clustering clusters (center_view: the key encoder over every train
image, BN folded).

GPU seconds are ESTIMATES: FLOPs / (GPUs x peak x achieved fraction), the fraction taken from
published ResNet-50 throughputs on the same GPU (PUBLISHED, with their sources), so they assume
a pipeline as tuned as NVIDIA's; the host parts of the clustering (numpy seeding, assignment,
acceptance: they run on the CPU whatever the GPUs) at this CPU's measured rates
(bench.clustering_scale --name=..., conservative for a larger host) or, without them, at stated
assumed rates. Measured CPU numbers are read from bench/results: cross_framework_resnet50.json
(bench.cross_framework --backbone=resnet50), the clustering_scale runs named by
--clustering_results, and this script's own --measure run (imagenet_epoch_cpu.json).
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import functools
import json
import math
import os
import time

import numpy as np

from bench import clustering_scale, common, flops

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
IMAGENET_CLASSES = 1000
DEFAULT_FLAGFILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "flags",
                                "imagenet.cfg")
NOT_RUN_SETTINGS = ("dataset", "model_dir", "data_dir")  # where, not what: left out

# Peak dense throughput per GPU (NVIDIA A100 datasheet: FP32 19.5, TF32 156, BF16/FP16 312
# TFLOP/s, without sparsity; the 40 GB and 80 GB SXM4 parts have the same peaks).
A100 = {"name": "NVIDIA A100-SXM4 80GB", "peak": {"fp32": 19.5e12, "tf32": 156e12,
                                                   "bf16": 312e12}}
V100_FP32_PEAK = 15.7e12  # V100 SXM2, FP32 (no tensor cores): MoCo's reference runs in FP32

NVIDIA_TF = ("NVIDIA DeepLearningExamples, TensorFlow/Classification/ConvNets/resnet50v1.5/"
             "README.md (TensorFlow 20.06-tf1-py3 NGC container)")
NVIDIA_PT = ("NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/"
             "README.md (pytorch-21.03 NGC container)")
# Published ResNet-50 v1.5 throughputs (images/s) that calibrate the achieved fraction of peak.
PUBLISHED = {
    "train_8xA100": {
        "tf32": 7000, "bf16": 17400,  # "mixed precision" (fp16; bf16 has the same A100 peak)
        "source": f"{NVIDIA_TF}, 'Training performance: NVIDIA DGX A100 (8x A100 40GB)', "
                  "TF32 + XLA / mixed precision + XLA, batch 256 per GPU",
        "cross_check": f"{NVIDIA_PT}, 'Training performance: NVIDIA DGX A100 (8x A100 80GB)': "
                       "TF32 7,248, mixed precision 16,621 img/s"},
    "inference_1xA100": {  # by batch per GPU, without XLA (the embedding pass runs none)
        "tf32": {32: 1602.09, 64: 1793.81, 128: 1876.22, 256: 1911.96},
        "bf16": {32: 1974.01, 64: 3570.46, 128: 3474.94, 256: 3229.32},
        "source": f"{NVIDIA_TF}, 'Inference performance: NVIDIA DGX A100 (1x A100 40GB)', "
                  "TF32 / Mixed Precision Inference Latency (no XLA)"},
    "train_8xV100_fp32": {
        "images_per_s": 2855,
        "source": f"{NVIDIA_PT}, 'Training performance: NVIDIA DGX-1 16GB (8x V100 16GB)', "
                  "FP32"},
    "moco_v2_8xV100": {
        "epochs": 200, "hours": 53,
        "source": "facebookresearch/moco README.md (ResNet-50, 200 epochs, 'pre-train time "
                  "53 hours' on 8 NVIDIA V100 GPUs, MoCo v1 and v2); ppwwyyxx/moco.tensorflow "
                  "README.md ('200 epochs of pre-training takes ~53h', 8 V100s)"},
}
# Stated assumptions (no published number to calibrate them on).
ASSUMED = {
    "matmul_fraction": 0.6,  # a large dense GEMM (kNN similarity, 1024 x 2048 x N) on TF32
    "lloyd_fraction": 0.5,  # faiss-gpu's FP32 GEMM at d = 128 (skinny), one GPU
    "gpu_topk_elements_per_s": 1e10,  # tf.math.top_k, k = 200, over rows of ~1.28M: ~40 GB/s
    "host_to_gpu_bytes_per_s": 20e9,  # PCIe 4.0 x16, the kNN features to one GPU
    # Host rates used only without bench.clustering_scale results:
    "host_seeding_flops_per_s": 2e9,  # k-means++ at k = 1000 on 20,000 x 128: ~2.5 s for 5.1
    # GFLOP (docs/results.md, "What does the clustering pass cost"): a Python loop of mat-vecs
    "host_batched_seeding_flops_per_s": 20e9,  # above k = 1000: blocked matmuls per round
    "host_assignment_flops_per_s": 250e9,  # many-core BLAS GEMM + the single-threaded
    # top-2 merge (2 passes over the N x k block at ~3 G elements/s): ~0.9 ns per element
    "host_acceptance_seconds_per_level": 0.5,  # lexsort of N = 1.28M by cluster and confidence
}


def load_settings(flagfile: str, num_clusters: str | None):
    """The RunConfig of flagfile's flags (dataset / model_dir left out), k overridden."""
    from ifnd_tf import cli, config

    args = []
    with open(flagfile) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--") and line[2:].partition("=")[0] not in NOT_RUN_SETTINGS:
                args.append(line)
    values = cli.parse_flag_args(args)
    if num_clusters:
        values["num_clusters"] = num_clusters.split(",")
    return config.RunConfig.from_flat(values)


@functools.cache
def resnet50_macs(image_size: int = 224) -> dict[str, int]:
    """Multiply-adds of our ResNet-50 encoder at image_size, and of the supervised ResNet-50
    v1.5 the published throughputs ran (backbone + a 1000-way classifier)."""
    from ifnd_tf import encoders

    macs = flops.encoder_macs(encoders.build_encoder("resnet50", image_size))
    return {**macs, "supervised": macs["backbone"] + 2048 * IMAGENET_CLASSES}


def encoder_macs(cfg) -> dict[str, int]:
    if cfg.encoder.backbone == "resnet50" and cfg.encoder.width_multiplier == 1.0 \
            and cfg.encoder.embedding_dim == 128:
        return resnet50_macs(cfg.data.image_size)
    from ifnd_tf import encoders

    return flops.encoder_macs(encoders.build_encoder(
        cfg.encoder.backbone, cfg.data.image_size, cfg.encoder.width_multiplier,
        cfg.encoder.embedding_dim))


def feature_dim(cfg) -> int:
    """The backbone's feature size (what the kNN monitor compares)."""
    from ifnd_tf import encoders

    if cfg.encoder.backbone == "resnet50":
        return max(int(64 * cfg.encoder.width_multiplier * 8), 8) * 4
    return int(encoders.build_encoder(cfg.encoder.backbone, cfg.data.image_size,
                                      cfg.encoder.width_multiplier).output["features"].shape[-1])


def epoch_work(cfg, macs: dict, num_examples: int, val_examples: int, features: int) -> dict:
    """FLOPs (and other work) of every stage of one epoch, from exact counts."""
    from ifnd_tf import config

    forward = flops.FLOPS_PER_MAC * macs["encoder"]  # one encoder forward, one image
    dim, queue = cfg.encoder.embedding_dim, cfg.moco.queue_size
    logits = flops.FLOPS_PER_MAC * dim * (queue + 1)  # positive + queue cosines, one query
    train = {"query_forward_backward": num_examples * (1 + flops.BACKWARD_FORWARDS) * forward,
             "key_forward": num_examples * forward,
             "logits_forward_backward": num_examples * (1 + flops.BACKWARD_FORWARDS) * logits}
    d = cfg.detection
    levels = []
    for k in d.num_clusters:
        counts = clustering_scale.flops(num_examples, k, dim, d.kmeans_iterations,
                                        d.kmeans_max_points_per_centroid)
        levels.append({"k": k, "flops": counts,
                       "lloyd_sample": min(num_examples, k * d.kmeans_max_points_per_centroid),
                       "similarities": num_examples * k})
    m = cfg.monitor
    knn_train = min(m.knn_max_train or num_examples, num_examples)
    knn = {"train_pass": knn_train * forward, "val_pass": val_examples * forward,
           "similarity": flops.FLOPS_PER_MAC * val_examples * knn_train * features,
           "topk_elements": val_examples * knn_train, "train_examples": knn_train,
           "feature_bytes": knn_train * features * 4,
           "evaluations_per_epoch": 1.0 / m.knn_every if m.knn_every else 0.0}
    own_pass = {config.CENTER_VIEW: True, config.TRAIN_KEYS: False,
                config.QUERY_VIEW: not (m.knn_every == 1 and knn_train == num_examples)}
    return {"num_examples": num_examples, "val_examples": val_examples,
            "forward_flops_per_image": forward, "logits_flops_per_image": logits,
            "training": train, "clustering_levels": levels, "knn": knn,
            "embedding_pass": num_examples * forward,
            "cluster_features": d.cluster_features,
            "embedding_pass_needed": own_pass[d.cluster_features], "own_pass_by_features":
            own_pass}


def calibration(sup_macs: int, embed_batch_per_gpu: int, moco_forward_flops: float) -> dict:
    """Achieved fractions of peak from the published throughputs (the same ResNet-50 count)."""
    sup = flops.FLOPS_PER_MAC * sup_macs
    train_img = PUBLISHED["train_8xA100"]
    infer = PUBLISHED["inference_1xA100"]
    batch = max([b for b in infer["tf32"] if b <= embed_batch_per_gpu] or [min(infer["tf32"])])
    result = {"supervised_forward_flops": sup, "inference_batch_per_gpu": batch}
    for precision in ("tf32", "bf16"):
        peak = A100["peak"][precision]
        result[precision] = {
            "train_fraction": train_img[precision] * 3 * sup / (8 * peak),
            "inference_fraction": infer[precision][batch] * sup / peak}
    # MoCo v2's reference code against NVIDIA's tuned ResNet-50 on the same 8 V100 (FP32):
    moco = PUBLISHED["moco_v2_8xV100"]
    moco_img_s = IMAGENET_TRAIN * moco["epochs"] / (moco["hours"] * 3600)
    moco_flops_s = moco_img_s * 4 * moco_forward_flops
    tuned_flops_s = PUBLISHED["train_8xV100_fp32"]["images_per_s"] * 3 * sup
    result["moco_reference"] = {
        "images_per_s": moco_img_s, "seconds_per_epoch": IMAGENET_TRAIN / moco_img_s,
        "fraction_of_v100_fp32_peak": moco_flops_s / (8 * V100_FP32_PEAK),
        "efficiency_vs_tuned": moco_flops_s / tuned_flops_s}
    return result


def seconds_per_flop(passes: list[dict], part: str) -> float:
    """Seconds per FLOP of one part over the passes, FLOP-weighted (the largest passes, the
    nearest to full size, weigh most; fixed per-call overheads of small ones least)."""
    return sum(p["seconds"][part] for p in passes) / sum(p["flops"][part] for p in passes)


def host_rates(passes: list[dict], measured: dict | None = None) -> dict:
    """Seconds per FLOP of the host-side clustering parts from bench.clustering_scale passes
    (seeding per regime: sequential up to k = 1000, batched above), else the assumed rates;
    the acceptance's seconds per level and image from --measure, else assumed."""
    from ifnd_tf import kmeans

    rates = {"source": "assumed (no bench.clustering_scale results)",
             "seeding_sequential": 1 / ASSUMED["host_seeding_flops_per_s"],
             "seeding_batched": 1 / ASSUMED["host_batched_seeding_flops_per_s"],
             "assignment": 1 / ASSUMED["host_assignment_flops_per_s"],
             "acceptance_per_level_and_image":
             ASSUMED["host_acceptance_seconds_per_level"] / IMAGENET_TRAIN,
             "acceptance_source": "assumed"}
    if measured and not measured.get("quick"):
        accept = measured["acceptance"]
        rates["acceptance_per_level_and_image"] = accept["seconds"] / (
            accept["levels"] * accept["num_examples"])
        rates["acceptance_source"] = (f"measured at N = {accept['num_examples']:,} on this "
                                      "CPU")
    if not passes:
        return rates
    rates["source"] = (f"measured on this CPU: {len(passes)} bench.clustering_scale passes "
                       "(2 cores: conservative for a larger host's BLAS part)")
    rates["assignment"] = seconds_per_flop(passes, "assignment")
    for regime, sequential in (("seeding_sequential", True), ("seeding_batched", False)):
        chosen = [p for p in passes if (p["k"] <= kmeans.SEQUENTIAL_SEEDING_MAX_K) == sequential]
        if chosen:
            rates[regime] = seconds_per_flop(chosen, "seeding")
    return rates


def seeding_seconds(levels: list[dict], rates: dict) -> float:
    """Seeding seconds of every level at the host's rate for its regime."""
    from ifnd_tf import kmeans

    return sum(level["flops"]["seeding"] * rates[
        "seeding_sequential" if level["k"] <= kmeans.SEQUENTIAL_SEEDING_MAX_K
        else "seeding_batched"] for level in levels)


def scaling_law(passes: list[dict]) -> dict:
    """seconds = c * N^a * k^b over the passes (least squares in logs), per part and in total;
    exponents only for what varies (>= 3 passes needed)."""
    if len(passes) < 3:
        return {"note": f"{len(passes)} passes: >= 3 needed"}
    n = np.log([p["num_examples"] for p in passes])
    k = np.log([p["k"] for p in passes])
    columns, names = [np.ones_like(n)], ["log_c"]
    for values, name in ((n, "exponent_N"), (k, "exponent_k")):
        if np.ptp(values) > 0:
            columns.append(values)
            names.append(name)
    design = np.stack(columns, 1)
    result = {}
    for part in ("seeding", "lloyd", "assignment", "total"):
        seconds = [sum(p["seconds"].values()) if part == "total" else p["seconds"][part]
                   for p in passes]
        if min(seconds) <= 0:
            continue
        coef, *_ = np.linalg.lstsq(design, np.log(seconds), rcond=None)
        result[part] = {name: float(c) for name, c in zip(names, coef)}
    return result


def read_results(name: str) -> dict | None:
    path = os.path.join(common.RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def estimate(work: dict, cfg, gpus: int, precision: str, cal: dict, rates: dict) -> dict:
    """Seconds of every stage of one epoch on `gpus` A100s: ESTIMATES, each with its FLOPs and
    the rate it assumes."""
    peak = A100["peak"][precision]
    fractions = cal[precision]
    train_rate = gpus * peak * fractions["train_fraction"]
    infer_rate = gpus * peak * fractions["inference_fraction"]
    stages = {}
    train_flops = sum(work["training"].values())
    stages["a_training"] = {
        "flops": train_flops, "rate_flops_per_s": train_rate,
        "assumes": f"{gpus} x {peak / 1e12:g} TFLOP/s ({precision}) x "
                   f"{fractions['train_fraction']:.1%} (NVIDIA's ResNet-50 training, 8 GPUs)",
        "seconds": train_flops / train_rate}
    levels = work["clustering_levels"]
    lloyd = sum(level["flops"]["lloyd"] for level in levels)
    lloyd_rate = A100["peak"]["fp32"] * ASSUMED["lloyd_fraction"]
    stages["b_clustering_lloyd"] = {
        "flops": lloyd, "rate_flops_per_s": lloyd_rate, "seconds": lloyd / lloyd_rate,
        "assumes": f"faiss-gpu, 1 GPU x {A100['peak']['fp32'] / 1e12:g} TFLOP/s (fp32) x "
                   f"{ASSUMED['lloyd_fraction']:.0%} (assumed)"}
    assignment = sum(level["flops"]["assignment"] for level in levels)
    stages["b_clustering_host"] = {
        "flops": sum(level["flops"]["seeding"] for level in levels) + assignment,
        "seconds": seeding_seconds(levels, rates) + assignment * rates["assignment"]
        + rates["acceptance_per_level_and_image"] * len(levels) * work["num_examples"],
        "assumes": f"numpy on the host (seeding, assignment): {rates['source']}; acceptance "
                   f"{rates['acceptance_source']}"}
    knn = work["knn"]
    passes = knn["train_pass"] + knn["val_pass"]
    matmul_rate = peak * ASSUMED["matmul_fraction"]
    knn_seconds = {"passes": passes / infer_rate, "similarity": knn["similarity"] / matmul_rate,
                   "topk": knn["topk_elements"] / ASSUMED["gpu_topk_elements_per_s"],
                   "copy": knn["feature_bytes"] / ASSUMED["host_to_gpu_bytes_per_s"]}
    per_eval = sum(knn_seconds.values())
    stages["c_knn_monitor"] = {
        "flops": passes + knn["similarity"], "seconds_per_evaluation": per_eval,
        "parts_seconds": knn_seconds, "evaluations_per_epoch": knn["evaluations_per_epoch"],
        "seconds": per_eval * knn["evaluations_per_epoch"],
        "assumes": f"passes on {gpus} GPUs at {fractions['inference_fraction']:.1%} (NVIDIA's "
                   f"inference, batch {cal['inference_batch_per_gpu']} per GPU); similarity on "
                   f"1 GPU at {ASSUMED['matmul_fraction']:.0%} of {peak / 1e12:g} TFLOP/s; "
                   f"top-k {ASSUMED['gpu_topk_elements_per_s']:.0e} elements/s; features "
                   f"copied at {ASSUMED['host_to_gpu_bytes_per_s'] / 1e9:g} GB/s (assumed)"}
    embed = work["embedding_pass"] if work["embedding_pass_needed"] else 0
    stages["d_embedding_pass"] = {
        "flops": embed, "rate_flops_per_s": infer_rate, "seconds": embed / infer_rate,
        "assumes": f"{gpus} x {peak / 1e12:g} TFLOP/s x {fractions['inference_fraction']:.1%} "
                   f"(NVIDIA's ResNet-50 inference, batch {cal['inference_batch_per_gpu']} per "
                   "GPU)"}
    total = sum(s["seconds"] for s in stages.values())
    clustering = stages["b_clustering_lloyd"]["seconds"] + stages["b_clustering_host"]["seconds"]
    return {"stages": stages, "epoch_seconds": total,
            "clustering_seconds": clustering,
            "clustering_share": clustering / total,
            "clustering_with_pass_share": (clustering + stages["d_embedding_pass"]["seconds"])
            / total,
            "epoch_seconds_at_moco_efficiency":
            total - stages["a_training"]["seconds"] + stages["a_training"]["seconds"]
            / cal["moco_reference"]["efficiency_vs_tuned"]}


def shares_by_features(work: dict, cfg, gpus: int, precision: str, cal: dict,
                       rates: dict) -> list[list]:
    """Clustering share of the epoch for each --cluster_features, with the kNN monitor as
    configured and off (query_view then needs its own pass)."""
    from ifnd_tf import config

    knn_off = {**work, "knn": {**work["knn"], "evaluations_per_epoch": 0.0},
               "own_pass_by_features": {**work["own_pass_by_features"],
                                        config.QUERY_VIEW: True}}
    shared = {config.QUERY_VIEW: "the kNN monitor's", config.TRAIN_KEYS: "none: train-step keys"}
    rows = []
    for knn_label, variant in (("as configured", work), ("off", knn_off)):
        for features, needs_pass in variant["own_pass_by_features"].items():
            est = estimate({**variant, "embedding_pass_needed": needs_pass}, cfg, gpus,
                           precision, cal, rates)
            rows.append([features, knn_label, "own" if needs_pass else shared[features],
                         est["stages"]["d_embedding_pass"]["seconds"], est["clustering_seconds"],
                         est["epoch_seconds"], f"{est['clustering_share']:.1%}",
                         f"{est['clustering_with_pass_share']:.1%}"])
    return rows


# --- Measured on this CPU (--measure) --------------------------------------------------------

def measure_knn(queries: int, bank: int, features: int, classes: int, k: int,
                seed: int = 0) -> dict:
    """Seconds of knn.knn_scores (similarity, top-k, votes) at queries x bank x features."""
    from ifnd_tf import knn

    rng = np.random.default_rng(seed)
    train = rng.standard_normal((bank, features), np.float32)
    labels = rng.integers(0, classes, bank)
    test = rng.standard_normal((queries, features), np.float32)
    knn.knn_scores(train[:4 * k], labels[:4 * k], test[:8], classes, k)  # trace, warm up
    start = time.perf_counter()
    knn.knn_scores(train, labels, test, classes, k)
    seconds = time.perf_counter() - start
    return {"queries": queries, "bank": bank, "features": features, "k": k,
            "flops": flops.FLOPS_PER_MAC * queries * bank * features, "seconds": seconds}


def measure_inference(image_size: int, batch: int, batches: int) -> dict:
    """Images/s of the embedding pass's model: our ResNet-50, BN folded, inference mode."""
    import tensorflow as tf

    from ifnd_tf import embedding, encoders

    encoder = encoders.build_encoder("resnet50", image_size)
    model = embedding.inference_encoder(encoder)
    embed = tf.function(lambda x: model(x)["embedding"])
    images = tf.random.uniform([batch, image_size, image_size, 3], seed=0)
    embed(images).numpy()  # trace, allocate
    start = time.perf_counter()
    for _ in range(batches):
        embed(images).numpy()
    seconds = time.perf_counter() - start
    return {"image_size": image_size, "batch": batch, "batches": batches, "seconds": seconds,
            "images_per_s": batch * batches / seconds,
            "macs_per_image": flops.encoder_macs(encoder)["encoder"]}


def measure_acceptance(num_examples: int, ks: tuple, seed: int = 0) -> dict:
    """Seconds of the acceptance (per level, per cluster the top alpha by margin) at full N."""
    from ifnd_tf import clustering

    rng = np.random.default_rng(seed)
    assigns = np.stack([rng.integers(0, k, num_examples) for k in ks])
    margins = rng.random((len(ks), num_examples), np.float32)
    start = time.perf_counter()
    clustering.accept_levels(assigns, margins, margins, 0.5)
    return {"num_examples": num_examples, "levels": len(ks),
            "seconds": time.perf_counter() - start}


def measure(args, cfg, features: int) -> dict:
    """(c) and (d) on this CPU at sub-sampled sizes, and the acceptance at full size."""
    quick = args.quick
    knn = measure_knn(500 if quick else args.knn_queries, 5000 if quick else args.knn_bank,
                      features, IMAGENET_CLASSES, cfg.monitor.knn_k)
    print(f"(c) kNN {knn['queries']} x {knn['bank']} x {features}: {knn['seconds']:.1f} s",
          flush=True)
    infer = measure_inference(64 if quick else cfg.data.image_size, 4 if quick else args.batch,
                              2 if quick else args.infer_batches)
    print(f"(d) inference at {infer['image_size']} px, batch {infer['batch']}: "
          f"{infer['images_per_s']:.3g} images/s", flush=True)
    accept = measure_acceptance(20_000 if quick else IMAGENET_TRAIN,
                                cfg.detection.num_clusters)
    print(f"(b) acceptance, {accept['levels']} levels of {accept['num_examples']}: "
          f"{accept['seconds']:.2f} s", flush=True)
    return {"knn": knn, "inference": infer, "acceptance": accept, "quick": quick}


# --- Tables --------------------------------------------------------------------------------

def _tflop(x: float) -> str:
    return f"{x / 1e12:,.0f}" if x >= 1e15 else f"{x / 1e12:.3g}"


def stage_rows(est: dict, work: dict, cfg, features: int) -> list[list]:
    """The epoch table: per stage its work, counted FLOPs, assumed rate, estimated seconds."""
    s, d, m = est["stages"], cfg.detection, cfg.monitor
    knn_train, val = work["knn"]["train_examples"], work["val_examples"]
    if d.cluster_features == "center_view":
        pass_text = "key encoder over every train image, BN folded"
    elif d.cluster_features == "train_keys":
        pass_text = "none: each image's key from its last train step"
    elif work["embedding_pass_needed"]:
        pass_text = "query encoder over every train image (the kNN pass is not shared)"
    else:
        pass_text = "none of its own: the kNN monitor's query pass"
    rows = [
        ["(a) training step", (f"{work['num_examples']:,} images x (query fwd + bwd, key fwd, "
                               f"logits vs {cfg.moco.queue_size:,} keys)"), "a_training"],
        ["(b) clustering: Lloyd", (f"{d.kmeans_iterations} iterations on k x "
                                   f"{d.kmeans_max_points_per_centroid} points, k = "
                                   + ", ".join(str(k) for k in d.num_clusters)),
         "b_clustering_lloyd"],
        ["(b) clustering: seeding, assignment, acceptance",
         f"N x k cosines + top-2 at {len(d.num_clusters)} levels", "b_clustering_host"],
        ["(c) kNN monitor", (f"query pass over {knn_train:,} train + {val:,} val; {val:,} x "
                             f"{knn_train:,} x {features} cosines, top-{m.knn_k}; every "
                             f"{m.knn_every} epoch(s)"), "c_knn_monitor"],
        ["(d) embedding pass", f"{d.cluster_features}: {pass_text}", "d_embedding_pass"]]
    total = est["epoch_seconds"]
    table = [[name, text, _tflop(s[key]["flops"]), s[key]["assumes"], s[key]["seconds"],
              f"{s[key]['seconds'] / total:.1%}"] for name, text, key in rows]
    table.append(["**epoch**", "", _tflop(sum(v["flops"] for v in s.values())), "", total,
                  "100%"])
    return table


def cpu_rows(work: dict, measured: dict | None, cross: dict | None,
             clustering: list[dict], law: dict, rates: dict, cfg) -> list[list]:
    """What this CPU measured, and the full epoch stage scaled from it (by images, FLOPs or
    pairs): labelled measured / scaled."""
    rows = []
    n = work["num_examples"]
    if cross:
        ours, theirs = cross["images_per_s"]["ifnd_tf (TF)"], cross["images_per_s"][
            "PyTorch reference"]
        rows.append([("(a) MoCo step, ResNet-50 at "
                     f"{cross['image_size']} px, batch {cross['batch']}"),
                     (f"measured: ours {ours:.3g} img/s, PyTorch {theirs:.3g} img/s, "
                     f"ours / theirs {cross['ratio']:.3g} (paired)"),
                     f"scaled: {n / ours / 3600:,.0f} h per epoch (ours)"])
    for p in clustering:
        rows.append([(f"(b) clustering pass N = {p['num_examples']:,}, k = {p['k']:,} "
                     f"({p['backend']})"),
                     "measured: " + ", ".join(f"{part} {p['seconds'][part]:.3g} s" for part in
                                              ("seeding", "lloyd", "assignment"))
                     + f"; pass peak {p['pass_peak_mb']:,.0f} MB (process "
                     f"{p['peak_rss_mb']:,.0f} MB)", ""])
    if "total" in law:
        exps = ", ".join(f"{name.split('_')[1]}^{v:.2f}" for name, v in law["total"].items()
                         if name != "log_c")
        rows.append(["(b) scaling law of a pass (total seconds)", f"fitted: seconds ∝ {exps}",
                     ""])
    if clustering:
        full = [clustering_scale.flops(n, k, cfg.encoder.embedding_dim,
                                       cfg.detection.kmeans_iterations,
                                       cfg.detection.kmeans_max_points_per_centroid)
                for k in cfg.detection.num_clusters]
        lloyd = seconds_per_flop(clustering, "lloyd")
        levels = [{"k": k, "flops": f} for k, f in zip(cfg.detection.num_clusters, full)]
        seconds = (seeding_seconds(levels, rates) + sum(
            lloyd * f["lloyd"] + rates["assignment"] * f["assignment"] for f in full))
        rows.append([f"(b) all levels at N = {n:,}, k = "
                     + ", ".join(str(k) for k in cfg.detection.num_clusters),
                     "", (f"scaled by FLOPs per part: {seconds:,.0f} s on this CPU "
                         f"({clustering[0]['backend']} Lloyd)")])
    if measured:
        knn = measured["knn"]
        factor = work["knn"]["topk_elements"] / (knn["queries"] * knn["bank"])
        rows.append([(f"(c) kNN similarity + top-{knn['k']} + votes, {knn['queries']:,} x "
                     f"{knn['bank']:,} x {knn['features']} (votes scale with queries only: "
                     "over-scaled)"),
                     (f"measured: {knn['seconds']:.3g} s ({knn['flops'] / knn['seconds'] / 1e9:.3g}"
                     " GFLOP/s)"), (f"scaled by pairs (x{factor:,.0f}): "
                                   f"{knn['seconds'] * factor:,.0f} s per evaluation")])
        inf = measured["inference"]
        rows.append([f"(d) inference, ResNet-50 at {inf['image_size']} px, batch {inf['batch']}",
                     f"measured: {inf['images_per_s']:.3g} img/s",
                     f"scaled: {n / inf['images_per_s'] / 3600:,.1f} h per pass"])
        acc = measured["acceptance"]
        rows.append([f"(b) acceptance, {acc['levels']} levels, N = {acc['num_examples']:,}",
                     f"measured: {acc['seconds']:.3g} s", ""])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flagfile", default=DEFAULT_FLAGFILE)
    parser.add_argument("--num_clusters", default="1000,2000,3000")
    parser.add_argument("--num_examples", type=int, default=IMAGENET_TRAIN)
    parser.add_argument("--val_examples", type=int, default=IMAGENET_VAL)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--precision", default="tf32", choices=("tf32", "bf16"),
                        help="tf32: --mixed_precision=off on an A100 (TF's default for float32 "
                        "matmuls / convolutions); bf16: --mixed_precision=bfloat16")
    parser.add_argument("--clustering_results",
                        default="clustering_scale_imagenet,clustering_scale_imagenet_n",
                        help="bench/results names (comma-separated) of bench.clustering_scale "
                        "runs to fit")
    parser.add_argument("--measure", action="store_true", help="time (c), (d) on this CPU")
    parser.add_argument("--quick", action="store_true", help="--measure at tiny sizes (smoke)")
    parser.add_argument("--knn_queries", type=int, default=5000)
    parser.add_argument("--knn_bank", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=32, help="(d) inference batch")
    parser.add_argument("--infer_batches", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="TF's threads (0: as they are)")
    parser.add_argument("--name", default="imagenet_epoch")
    args = parser.parse_args(argv)
    if args.threads:
        common.set_threads(args.threads)
    cfg = load_settings(args.flagfile, args.num_clusters)
    macs = encoder_macs(cfg)
    features = feature_dim(cfg)
    work = epoch_work(cfg, macs, args.num_examples, args.val_examples, features)
    sup = resnet50_macs(224)["supervised"]
    cal = calibration(sup, max(cfg.detection.embed_batch_size // args.gpus, 1),
                      flops.FLOPS_PER_MAC * resnet50_macs(224)["encoder"])
    measured_name = f"{args.name}_cpu"
    if args.measure or args.quick:
        measured = measure(args, cfg, features)
        common.write_json(measured_name, measured)
    else:
        measured = read_results(measured_name)
    cross = read_results("cross_framework_resnet50")
    clustering = [p for name in args.clustering_results.split(",") if name
                  for p in (read_results(name) or {}).get("passes", [])]
    same_backend = [p for p in clustering if p["backend"] == cfg.detection.kmeans_backend]
    clustering = same_backend or clustering
    rates = host_rates(clustering, measured)
    law = scaling_law(clustering)
    est = estimate(work, cfg, args.gpus, args.precision, cal, rates)

    gpu = f"{args.gpus} x {A100['name']}, {args.precision}"
    s = est["stages"]
    d = cfg.detection
    common.print_table(f"One ImageNet-1k epoch on {gpu}: ESTIMATES from counted FLOPs "
                       f"(fractions from published ResNet-50 throughputs)",
                       ["stage", "work", "TFLOP (counted)", "assumed rate",
                        "seconds (estimate)", "share"], stage_rows(est, work, cfg, features))
    print(f"\nClustering share of the epoch (estimate): k-means alone "
          f"{est['clustering_share']:.1%}; with its {d.cluster_features} embedding pass "
          f"{est['clustering_with_pass_share']:.1%} (target: <= 10 %). At MoCo v2's published "
          f"efficiency (x{cal['moco_reference']['efficiency_vs_tuned']:.2f} of NVIDIA's) the "
          f"training stage is slower and the epoch ~{est['epoch_seconds_at_moco_efficiency']:,.0f}"
          " s (estimate).")
    if clustering:
        lloyd_cpu = seconds_per_flop(clustering, "lloyd") * s["b_clustering_lloyd"]["flops"]
        print(f"Without faiss-gpu (requirements.txt installs faiss-cpu) the Lloyd iterations run "
              f"on the host too: ~{lloyd_cpu:,.0f} s at this CPU's measured "
              f"{clustering[0]['backend']} rate instead of "
              f"{s['b_clustering_lloyd']['seconds']:.3g} s (scaled, not an estimate for a "
              "larger host).")
    common.print_table("Clustering share by --cluster_features (estimate)",
                       ["cluster_features", "kNN monitor", "embedding pass", "pass s",
                        "k-means s", "epoch s", "share: k-means", "share: k-means + pass"],
                       shares_by_features(work, cfg, args.gpus, args.precision, cal, rates))
    common.print_table(
        "Calibration (published ResNet-50 v1.5 throughputs -> achieved fraction of peak)",
        ["what", "value", "source"],
        [["training, 8 x A100, TF32 / mixed", (f"{PUBLISHED['train_8xA100']['tf32']:,} / "
          f"{PUBLISHED['train_8xA100']['bf16']:,} img/s -> {cal['tf32']['train_fraction']:.1%}"
          f" / {cal['bf16']['train_fraction']:.1%} of peak"), PUBLISHED["train_8xA100"]["source"]],
         [f"inference, 1 x A100, batch {cal['inference_batch_per_gpu']}, TF32 / mixed",
          (f"{PUBLISHED['inference_1xA100']['tf32'][cal['inference_batch_per_gpu']]:,} / "
          f"{PUBLISHED['inference_1xA100']['bf16'][cal['inference_batch_per_gpu']]:,} img/s -> "
          f"{cal['tf32']['inference_fraction']:.1%} / {cal['bf16']['inference_fraction']:.1%}"),
          PUBLISHED["inference_1xA100"]["source"]],
         ["MoCo v2 reference, 8 x V100 FP32", (f"{cal['moco_reference']['images_per_s']:,.0f} "
          f"img/s ({cal['moco_reference']['seconds_per_epoch']:,.0f} s per epoch): "
          f"{cal['moco_reference']['fraction_of_v100_fp32_peak']:.1%} of FP32 peak, "
          f"x{cal['moco_reference']['efficiency_vs_tuned']:.2f} of NVIDIA's tuned FP32 rate"),
          PUBLISHED["moco_v2_8xV100"]["source"] + "; " + PUBLISHED["train_8xV100_fp32"][
              "source"]]])
    cpu = cpu_rows(work, measured, cross, clustering, law, rates, cfg)
    if cpu:
        common.print_table("Measured on this CPU (2 cores unless said), and scaled to the full "
                           "stage", ["what", "measured", "full size"], cpu)
    pipeline = read_results("jpeg_pipeline")
    if pipeline:
        per_core = pipeline["examples_per_s_per_core"]["ifnd_tf"]
        train_ips = work["num_examples"] / s["a_training"]["seconds"]
        print(f"\nInput: the estimated {train_ips:,.0f} training images/s need "
              f"~{math.ceil(train_ips / per_core)} cores of two-view JPEG decoding and "
              f"augmentation at bench.jpeg_pipeline's {per_core:.3g} examples/s per core "
              f"({pipeline['machine']['cpu']['model']}); not in the estimate.")
    print(f"\nEncoder: {macs['encoder'] / 1e9:.4g} G multiply-adds per image "
          f"(backbone {macs['backbone'] / 1e9:.4g} G, head {macs['head'] / 1e6:.3g} M); "
          f"a MoCo step {work['forward_flops_per_image'] * 4 / 1e9:.4g} GFLOP per image.")
    common.write_json(args.name, {
        "note": "every GPU number is an estimate (FLOPs / (GPUs x peak x fraction)); "
                "CPU numbers are measured or scaled as labelled",
        "settings": {"flagfile": os.path.relpath(args.flagfile), "backbone":
                     cfg.encoder.backbone, "image_size": cfg.data.image_size,
                     "batch_size": cfg.schedule.batch_size, "queue_size": cfg.moco.queue_size,
                     "num_clusters": list(d.num_clusters), "kmeans_backend": d.kmeans_backend,
                     "kmeans_iterations": d.kmeans_iterations, "kmeans_max_points_per_centroid":
                     d.kmeans_max_points_per_centroid, "cluster_features": d.cluster_features,
                     "embed_batch_size": d.embed_batch_size, "knn_every": cfg.monitor.knn_every,
                     "knn_max_train": cfg.monitor.knn_max_train, "knn_k": cfg.monitor.knn_k,
                     "mixed_precision": cfg.run.mixed_precision},
        "gpu": {"name": A100["name"], "count": args.gpus, "precision": args.precision,
                "peak_flops_per_s": A100["peak"]},
        "encoder_macs": macs, "feature_dim": features, "work": work, "calibration": cal,
        "published": PUBLISHED, "assumed": ASSUMED, "host_rates": rates,
        "estimate": est, "clustering_passes": clustering, "clustering_scaling_law": law,
        "measured_cpu": measured, "cross_framework_resnet50": cross and {
            k: cross[k] for k in ("images_per_s", "ratio", "batch", "image_size", "date")}})


if __name__ == "__main__":
    main()
