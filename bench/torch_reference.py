"""A plain PyTorch MoCo v2 step: the reference `bench.cross_framework` times.

Same architectures and step as ifnd_tf's MomentumContrast. resnet18_cifar: 3x3 stride-1 stem,
no max-pool, BasicBlocks [2, 2, 2, 2], head 512 -> 512 -> 128. resnet50: torchvision's
ResNet-50 (7x7 stride-2 stem, 3x3 stride-2 max-pool, Bottlenecks [3, 4, 6, 3] with the stride
in the 3x3 conv, v1.5), written out here (no torchvision dependency), head 2048 -> 2048 -> 128.
Momentum (EMA) key encoder with its batch shuffled and normalised in groups (shuffle-BN on one
device), queue of 4096 keys, InfoNCE at T = 0.2, SGD with momentum and coupled weight decay. No
false-negative mask: the reference is plain MoCo v2. Needs torch (bench/requirements.txt),
never the package itself.
"""
import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, filters: int, stride: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(inputs, filters, 3, stride, 1, bias=False),
                               nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
                               nn.Conv2d(filters, filters, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(filters))
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != filters:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, filters, 1, stride, bias=False),
                                          nn.BatchNorm2d(filters))

    def forward(self, x):
        return F.relu(self.a(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride is in the 3x3 conv), expansion 4."""

    def __init__(self, inputs: int, filters: int, stride: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(inputs, filters, 1, bias=False),
                               nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
                               nn.Conv2d(filters, filters, 3, stride, 1, bias=False),
                               nn.BatchNorm2d(filters), nn.ReLU(inplace=True),
                               nn.Conv2d(filters, 4 * filters, 1, bias=False),
                               nn.BatchNorm2d(4 * filters))
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != 4 * filters:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, 4 * filters, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * filters))

    def forward(self, x):
        return F.relu(self.a(x) + self.shortcut(x))


def _stages(block, expansion: int, blocks_per_stage: tuple) -> tuple[list[nn.Module], int]:
    layers, inputs = [], 64
    for stage, num_blocks in enumerate(blocks_per_stage):
        filters = 64 * 2**stage
        for b in range(num_blocks):
            layers.append(block(inputs, filters, 2 if stage > 0 and b == 0 else 1))
            inputs = expansion * filters
    return layers, inputs


def resnet18_cifar_backbone() -> nn.Module:
    """3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2]; pooled 512-d features."""
    layers, _ = _stages(BasicBlock, 1, (2, 2, 2, 2))
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def resnet50_backbone() -> nn.Module:
    """torchvision's resnet50 without its classifier: pooled 2048-d features."""
    layers, _ = _stages(Bottleneck, 4, (3, 4, 6, 3))
    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), *layers,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


BACKBONES = {"resnet18_cifar": (resnet18_cifar_backbone, 512),
             "resnet50": (resnet50_backbone, 2048)}


def encoder(backbone: str = "resnet18_cifar", embedding_dim: int = 128) -> nn.Module:
    """Backbone + MoCo v2 head (Linear-ReLU-Linear); forward returns the unnormalised embedding
    (the step normalises it)."""
    make, features = BACKBONES[backbone]
    return nn.Sequential(make(), nn.Linear(features, features), nn.ReLU(inplace=True),
                         nn.Linear(features, embedding_dim))


class MoCo(nn.Module):
    def __init__(self, queue_size: int = 4096, dim: int = 128, momentum: float = 0.99,
                 temperature: float = 0.2, key_bn_splits: int = 4,
                 backbone: str = "resnet18_cifar"):
        super().__init__()
        self.query = encoder(backbone, dim)
        self.key = copy.deepcopy(self.query)
        for p in self.key.parameters():
            p.requires_grad = False
        self.momentum, self.temperature, self.splits = momentum, temperature, key_bn_splits
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.ptr = 0

    @torch.no_grad()
    def keys(self, view_k: torch.Tensor) -> torch.Tensor:
        for k, q in zip(self.key.parameters(), self.query.parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)
        order = torch.randperm(view_k.shape[0])
        groups = torch.chunk(view_k[order], self.splits)
        shuffled = torch.cat([F.normalize(self.key(g), dim=1) for g in groups])
        return shuffled[torch.argsort(order)]

    def loss(self, view_q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query = F.normalize(self.query(view_q), dim=1)
        positive = (query * keys).sum(1, keepdim=True)
        logits = torch.cat([positive, query @ self.queue.T], 1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        self.queue[self.ptr:self.ptr + len(keys)] = keys
        self.ptr = (self.ptr + len(keys)) % len(self.queue)


def make_step(batch_size: int, image_size: int = 32, threads: int = 2, seed: int = 0,
              key_bn_splits: int = 4, backbone: str = "resnet18_cifar") -> Callable[[int], float]:
    """A function running n MoCo v2 steps on one fixed random batch; returns the last loss."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = MoCo(key_bn_splits=key_bn_splits, backbone=backbone).train()
    optimizer = torch.optim.SGD(model.query.parameters(), lr=0.06 * batch_size / 256,
                                momentum=0.9, weight_decay=5e-4)
    view_q, view_k = torch.rand(2, batch_size, 3, image_size, image_size)

    def run(steps: int) -> float:
        loss = torch.zeros(())
        for _ in range(steps):
            keys = model.keys(view_k)
            loss = model.loss(view_q, keys)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.enqueue(keys)
        return float(loss.detach())

    return run
