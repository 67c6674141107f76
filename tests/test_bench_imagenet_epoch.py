"""bench/imagenet_epoch.py's FLOP counts and cost model, and bench/torch_reference.py's
ResNet-50 against ours (no timing is asserted)."""
import json
import os

import pytest

from bench import clustering_scale, flops, imagenet_epoch

TORCHVISION_RESNET50_GMACS = 4.089  # torchvision's published count (backbone + 1000-way fc)
TORCHVISION_RESNET50_PARAMS = 25_557_032  # the same, its parameters


def test_resnet50_multiply_adds_at_224():
    macs = imagenet_epoch.resnet50_macs(224)
    assert macs["supervised"] == pytest.approx(TORCHVISION_RESNET50_GMACS * 1e9, rel=0.02)
    assert macs["head"] == 2048 * 2048 + 2048 * 128  # Linear-ReLU-Linear, biases not counted
    assert macs["encoder"] == macs["backbone"] + macs["head"]


def test_torch_reference_resnet50_is_ours():
    """Same parameters (torchvision's 25.56 M with its classifier) and multiply-adds."""
    torch = pytest.importorskip("torch")
    from bench import torch_reference
    from ifnd_tf import encoders

    backbone = torch_reference.resnet50_backbone()
    theirs = sum(p.numel() for p in backbone.parameters())
    ours = flops.trainable_parameters(encoders.build_encoder("resnet50", 64), flops.HEAD_LAYERS)
    assert theirs == ours
    assert theirs + 2048 * 1000 + 1000 == TORCHVISION_RESNET50_PARAMS
    macs = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            per_position = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            macs.append(output[0].numel() * per_position // module.groups)
    for module in backbone.modules():
        module.register_forward_hook(count)
    with torch.no_grad():
        backbone.eval()(torch.zeros(1, 3, 224, 224))
    assert sum(macs) == imagenet_epoch.resnet50_macs(224)["backbone"]


def test_epoch_work_and_estimate_add_up():
    cfg = imagenet_epoch.load_settings(imagenet_epoch.DEFAULT_FLAGFILE, "1000,2000,3000")
    assert cfg.detection.num_clusters == (1000, 2000, 3000)
    macs = imagenet_epoch.resnet50_macs(224)
    work = imagenet_epoch.epoch_work(cfg, macs, imagenet_epoch.IMAGENET_TRAIN, 50_000, 2048)
    forward = 2 * macs["encoder"]
    assert work["training"]["query_forward_backward"] == 3 * imagenet_epoch.IMAGENET_TRAIN * forward
    assert [level["flops"] for level in work["clustering_levels"]] == [
        clustering_scale.flops(imagenet_epoch.IMAGENET_TRAIN, k, 128, 20, 256)
        for k in (1000, 2000, 3000)]
    bank = cfg.monitor.knn_max_train or imagenet_epoch.IMAGENET_TRAIN  # imagenet.cfg: 100,000
    assert work["knn"]["similarity"] == 2 * 50_000 * bank * 2048
    assert work["embedding_pass_needed"]  # center_view, the default
    cal = imagenet_epoch.calibration(macs["supervised"], 64, forward)
    for precision in ("tf32", "bf16"):
        assert 0 < cal[precision]["train_fraction"] < 1
        assert 0 < cal[precision]["inference_fraction"] < 1
    est = imagenet_epoch.estimate(work, cfg, 8, "tf32", cal, imagenet_epoch.host_rates([]))
    stages = est["stages"].values()
    assert all(s["seconds"] > 0 and s["assumes"] for s in stages)
    assert sum(s["seconds"] for s in stages) == pytest.approx(est["epoch_seconds"])
    assert est["clustering_share"] < est["clustering_with_pass_share"] < 1


def test_scaling_law_recovers_exponents():
    passes = [{"num_examples": n, "k": k, "seconds": {"seeding": 1e-9 * n, "lloyd": 1e-9 * k,
                                                     "assignment": 1e-12 * n * k}}
              for n, k in ((1e5, 100), (2e5, 100), (1e5, 400), (4e5, 200))]
    law = imagenet_epoch.scaling_law(passes)
    assert law["assignment"]["exponent_N"] == pytest.approx(1.0)
    assert law["assignment"]["exponent_k"] == pytest.approx(1.0)
    assert law["seeding"]["exponent_k"] == pytest.approx(0.0, abs=1e-9)
    assert "note" in imagenet_epoch.scaling_law(passes[:2])


def test_main_writes_estimates(tmp_path):
    name = str(tmp_path / "epoch")
    imagenet_epoch.main([f"--name={name}", "--threads=0", "--clustering_results="])
    with open(f"{name}.json") as f:
        result = json.load(f)
    assert "estimate" in result["note"]
    assert set(result["estimate"]["stages"]) == {
        "a_training", "b_clustering_lloyd", "b_clustering_host", "c_knn_monitor",
        "d_embedding_pass"}
    assert result["settings"]["num_clusters"] == [1000, 2000, 3000]
    assert not os.path.exists(f"{name}_cpu.json")  # nothing measured without --measure
