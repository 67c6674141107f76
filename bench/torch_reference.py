"""A plain PyTorch MoCo v2 step on CIFAR ResNet-18: the reference `bench.cross_framework` times.

Same architecture and step as ifnd_tf's resnet18_cifar MomentumContrast: 3x3 stride-1 stem, no
max-pool, BasicBlocks [2, 2, 2, 2], head 512 -> 512 -> 128, momentum (EMA) key encoder with its
batch shuffled and normalised in groups (shuffle-BN on one device), queue of 4096 keys,
InfoNCE at T = 0.2, SGD with momentum and coupled weight decay. No false-negative mask: the
reference is plain MoCo v2. Needs torch (bench/requirements.txt), never the package itself.
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


def resnet18_cifar_encoder(embedding_dim: int = 128) -> nn.Module:
    """Backbone + MoCo v2 head; forward returns the L2-normalised embedding."""
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    inputs = 64
    for stage in range(4):
        filters = 64 * 2**stage
        for b in range(2):
            layers.append(BasicBlock(inputs, filters, 2 if stage > 0 and b == 0 else 1))
            inputs = filters
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True),
               nn.Linear(512, embedding_dim)]
    return nn.Sequential(*layers)


class MoCo(nn.Module):
    def __init__(self, queue_size: int = 4096, dim: int = 128, momentum: float = 0.99,
                 temperature: float = 0.2, key_bn_splits: int = 4):
        super().__init__()
        self.query = resnet18_cifar_encoder(dim)
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
              key_bn_splits: int = 4) -> Callable[[int], float]:
    """A function running n MoCo v2 steps on one fixed random batch; returns the last loss."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = MoCo(key_bn_splits=key_bn_splits).train()
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
