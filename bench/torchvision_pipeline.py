"""MoCo v2's own input pipeline in torchvision: the reference for bench/jpeg_pipeline.py.

The transforms are those of facebookresearch/moco main_moco.py with --aug-plus, and
moco/loader.py's TwoCropsTransform and (PIL) GaussianBlur, copied in behaviour: ImageFolder's
PIL loader, RandomResizedCrop(224, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
RandomGrayscale p=0.2, blur sigma in [0.1, 2] p=0.5, horizontal flip, ToTensor, Normalize.
Import this module before TensorFlow: the other order crashed the process at import
(torchvision 0.29.1 beside TF 2.21).
"""
import random

import torch
import torchvision
from PIL import ImageFilter
from torchvision import datasets, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class GaussianBlur:
    """moco/loader.py: PIL's Gaussian blur with a radius drawn from `sigma`."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class TwoCropsTransform:
    """moco/loader.py: two independent augmentations of one image (query and key)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return [self.transform(image), self.transform(image)]


def moco_v2_transform(image_size: int) -> TwoCropsTransform:
    return TwoCropsTransform(transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD)]))


def loader(split_dir: str, batch_size: int, image_size: int, workers: int, num_samples: int,
           seed: int = 0) -> torch.utils.data.DataLoader:
    """ImageFolder + DataLoader as main_moco.py builds them; every epoch (every `iter`) yields
    num_samples // batch_size batches of a fresh random subset. Workers persist across epochs
    (main_moco.py restarts them every epoch; that cost would be torchvision's, not counted)."""
    dataset = datasets.ImageFolder(split_dir, moco_v2_transform(image_size))
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=num_samples,
                                             generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)


VERSIONS = {"torch": torch.__version__, "torchvision": torchvision.__version__}
