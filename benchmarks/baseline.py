"""The baseline of benchmarks.train_throughput: how a plain PyTorch script trains the same net.

* model: the net's layers as stock torchvision-style modules in an ``nn.Sequential`` (Conv2d, ReLU(inplace),
  MaxPool2d(ceil_mode), LocalResponseNorm, Flatten, Linear, Dropout), built from our prototxt so both sides do
  exactly the same FLOPs; ``nn.CrossEntropyLoss``; ``torch.optim.SGD(momentum, weight_decay)``.
* data: an ImageFolder-style dataset of JPEG files decoded with PIL per image in DataLoader worker processes,
  random crop + mirror + mean subtraction per sample in Python (torchvision's ImageFolder / RandomCrop /
  RandomHorizontalFlip pattern), pinned batches copied to the device.

Written without torchvision on purpose: the GPU machine has none, and this keeps the CPU and GPU baselines
identical. The baseline gets no per-iteration ``loss.item()`` (torchvision's reference script logs one every
iteration), which only makes it faster: the ratios are conservative.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def sequential_from_net(net) -> nn.Sequential:
    """Stock modules for a chain-shaped TRAIN net (CaffeNet, prototxt/small): same shapes, default init."""
    mods, flat = [], False
    for name in net.layer_names:
        layer = net.layer(name)
        t = layer.type
        if layer.is_input or t in ("SoftmaxWithLoss", "Accuracy", "Silence"):
            continue
        if t == "Convolution":
            w = layer.blobs[0]
            mods.append(nn.Conv2d(layer.channels, layer.num_output, tuple(w.shape[2:]), layer.stride, layer.pad,
                                  layer.dilation, layer.group, bias=layer.bias_term))
        elif t == "ReLU":
            mods.append(nn.ReLU(inplace=True))
        elif t == "Pooling":
            cls = nn.MaxPool2d if layer.method == "MAX" else nn.AvgPool2d
            mods.append(cls(layer.kernel_for((0, 0, 1, 1)), layer.stride, layer.pad, ceil_mode=layer.ceil_mode))
        elif t == "LRN":
            mods.append(nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k))
        elif t == "InnerProduct":
            if not flat:
                mods.append(nn.Flatten())
                flat = True
            mods.append(nn.Linear(layer.k, layer.num_output, bias=layer.bias_term))
        elif t == "Dropout":
            mods.append(nn.Dropout(layer.ratio))
        else:
            raise ValueError(f"baseline: layer {name!r} of type {t} has no stock equivalent here")
    return nn.Sequential(*mods)


class BaselineTrainer:
    """model + CrossEntropyLoss + torch.optim.SGD; ``step(x, y)`` is one training iteration."""

    def __init__(self, net, device, lr=0.01, momentum=0.9, weight_decay=5e-4):
        self.model = sequential_from_net(net).to(device)
        self.loss = nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.detach()


# ---------------------------------------------------------------------------------------------- data


class JpegFolder(torch.utils.data.Dataset):
    """ImageFolder's layout (root/<class>/*.jpg) and per-sample transform: PIL decode, RGB, random crop,
    random mirror, float, minus the mean (torchvision's RandomCrop + RandomHorizontalFlip + ToTensor style)."""

    def __init__(self, root, crop: int, mean_rgb: np.ndarray):
        root = Path(root)
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [(str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())]
        self.crop = crop
        self.mean = torch.from_numpy(np.ascontiguousarray(mean_rgb, dtype=np.float32))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with Image.open(path) as im:
            x = np.asarray(im.convert("RGB"))
        h, w, _ = x.shape
        c = self.crop
        top, left = np.random.randint(0, h - c + 1), np.random.randint(0, w - c + 1)
        x = torch.from_numpy(x[top:top + c, left:left + c].copy()).permute(2, 0, 1).float()
        if np.random.rand() < 0.5:
            x = x.flip(2)
        return x - self.mean[:, top:top + c, left:left + c], label


def baseline_loader(root, crop, mean_rgb, batch, workers, pin):
    ds = JpegFolder(root, crop, mean_rgb)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                                       drop_last=True, persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers > 0 else None)


def write_jpegs(root, images_bgr: np.ndarray, labels, quality: int = 90) -> Path:
    """JPEG i of len(labels) is images[i % N] (N x 3 x H x W uint8 BGR, the store's layout), at
    root/c<label>/<i>.jpg."""
    root = Path(root)
    try:
        import cv2  # optional: PIL writes the JPEGs where OpenCV is absent

        def save(p, img):
            cv2.imwrite(str(p), img.transpose(1, 2, 0), [cv2.IMWRITE_JPEG_QUALITY, quality])
    except ImportError:
        def save(p, img):
            Image.fromarray(np.ascontiguousarray(img[::-1].transpose(1, 2, 0))).save(p, quality=quality)
    jobs = []
    for i, lab in enumerate(labels):
        d = root / f"c{int(lab):04d}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"{i:06d}.jpg", i))
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:  # the encoders release the GIL
        list(pool.map(lambda job: save(job[0], images_bgr[job[1] % len(images_bgr)]), jobs))
    return root


def default_workers() -> int:
    return max(1, min(12, (os.cpu_count() or 2) - 2))
