"""The pytorch/examples VAE recipe (vae/main.py), re-implemented as the speed baseline.

Faithful to the original script where it costs time: an MLP 784-400-20, ReLU,
sigmoid output, summed BCE + analytic KL, Adam 1e-3, batch 128, a torch
DataLoader (shuffle for train, not for test) over a Dataset whose
__getitem__ turns each uint8 image into a PIL image and runs
transforms.ToTensor() on it (what torchvision's datasets.MNIST does),
`train_loss += loss.item()` every step, a log line every 10 batches, a test
pass after every epoch, and the two image grids the script saves per epoch
(the reconstruction comparison and 64 prior samples).

The only departure: offline there is no datasets.MNIST download, so the
images come in as a uint8 array (the bundled digits) instead of from
torchvision's files; the per-sample path (PIL + ToTensor) is the same.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.utils import save_image

BATCH_SIZE = 128
LOG_INTERVAL = 10


class MNISTLike(Dataset):
    """What torchvision.datasets.MNIST.__getitem__ does, over an in-memory uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.data = torch.from_numpy(np.ascontiguousarray(images))  # (N, 28, 28) uint8, like MNIST.data
        self.targets = torch.from_numpy(np.ascontiguousarray(labels)).long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence summed over all elements and the batch."""
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # see Appendix B from VAE paper: Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def run(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    epochs: int = 10,
    seed: int = 1,
    results_dir: Path | None = None,
    on_epoch=None,
    device: str = "cpu",
) -> dict:
    """main.py's __main__ block: train(epoch); test(epoch); save samples. Returns losses and timings.

    `results_dir` is where the script's PNGs go (None: skip them). Log lines go
    to a buffer: the formatting cost stays, the terminal's does not. `device`: "cpu" or "cuda" (the
    script's --no-cuda off), with the script's DataLoader settings for each.
    """
    device = torch.device(device)
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    kwargs: dict = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}  # as the script
    train_loader = DataLoader(
        MNISTLike(train_images, train_labels, transform=transforms.ToTensor()),
        batch_size=BATCH_SIZE,
        shuffle=True,
        **kwargs,
    )
    test_loader = DataLoader(
        MNISTLike(test_images, test_labels, transform=transforms.ToTensor()),
        batch_size=BATCH_SIZE,
        shuffle=False,
        **kwargs,
    )
    model = VAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    log = io.StringIO()

    def train(epoch):
        model.train()
        train_loss = 0
        for batch_idx, (data, _) in enumerate(train_loader):
            data = data.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            if batch_idx % LOG_INTERVAL == 0:
                print(
                    "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                        epoch,
                        batch_idx * len(data),
                        len(train_loader.dataset),
                        100.0 * batch_idx / len(train_loader),
                        loss.item() / len(data),
                    )
                )
        print("====> Epoch: {} Average loss: {:.4f}".format(epoch, train_loss / len(train_loader.dataset)))
        return train_loss / len(train_loader.dataset)

    def test(epoch):
        model.eval()
        test_loss = 0
        with torch.no_grad():
            for i, (data, _) in enumerate(test_loader):
                data = data.to(device)
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar).item()
                if i == 0 and results_dir is not None:
                    n = min(data.size(0), 8)
                    comparison = torch.cat([data[:n], recon_batch.view(BATCH_SIZE, 1, 28, 28)[:n]])
                    save_image(comparison.cpu(), results_dir / f"reconstruction_{epoch}.png", nrow=n)
        test_loss /= len(test_loader.dataset)
        print("====> Test set loss: {:.4f}".format(test_loss))
        return test_loss

    history = []
    with redirect_stdout(log):
        for epoch in range(1, epochs + 1):
            train_loss = train(epoch)
            test_loss = test(epoch)
            if results_dir is not None:
                with torch.no_grad():
                    sample = torch.randn(64, 20).to(device)
                    sample = model.decode(sample).cpu()
                    save_image(sample.view(64, 1, 28, 28), results_dir / f"sample_{epoch}.png")
            rec = {
                "epoch": epoch,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "elapsed_s": time.perf_counter() - t_start,
            }
            history.append(rec)
            if on_epoch:
                on_epoch(rec)
    return {"history": history, "seconds": time.perf_counter() - t_start, "test_loss": history[-1]["test_loss"]}
