"""The pixel gate's out-of-distribution score: how unlike the training images a view is.

Stage 1's softmax cannot say "none of these": a chest, a knee or a test pattern still
gets a confident class (often 'unsupported', but not always). The distance of stage 1's
penultimate features to the nearest training region's mean, in the Mahalanobis metric of
a covariance shared by the regions (Lee et al., NeurIPS 2018, "A simple unified framework
for detecting out-of-distribution samples"), is small for the kind of image the model was
trained on and large for everything else. Its limit is chosen on validation images for a
stated in-distribution acceptance rate (:mod:`models.training.train`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["FeatureDistance", "classifier_layer", "penultimate_features"]

#: Share of the mean variance added to the covariance's diagonal: with a few hundred
#: images per region and up to a thousand features the sample covariance is singular.
SHRINKAGE = 0.1


def classifier_layer(network: nn.Module) -> nn.Linear:
    """The network's last linear layer, whose input is the feature vector the gate uses.

    Raises
    ------
    ValueError
        If the network has no linear layer.
    """
    layers = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not layers:
        raise ValueError(f"{type(network).__name__} has no linear classifier layer")
    return layers[-1]


@contextmanager
def penultimate_features(network: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the classifier layer's inputs of every forward pass made inside the block."""
    collected: list[torch.Tensor] = []

    def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        collected.append(inputs[0].detach().float().flatten(1))

    handle = classifier_layer(network).register_forward_hook(keep)
    try:
        yield collected
    finally:
        handle.remove()


class FeatureDistance(nn.Module):
    """Squared Mahalanobis distance of feature vectors to the nearest class mean.

    Parameters
    ----------
    means
        (C, D) class means of the training features.
    precision
        (D, D) inverse of the shared (shrunk) covariance.
    """

    means: torch.Tensor
    precision: torch.Tensor

    def __init__(self, means: torch.Tensor, precision: torch.Tensor) -> None:
        super().__init__()
        if means.dim() != 2 or means.shape[0] < 1:
            raise ValueError(f"means shape {tuple(means.shape)} is not (classes, features)")
        features = means.shape[1]
        if tuple(precision.shape) != (features, features):
            raise ValueError(
                f"precision shape {tuple(precision.shape)} is not ({features}, {features})"
            )
        self.register_buffer("means", means.detach().to(torch.float64).clone())
        self.register_buffer("precision", precision.detach().to(torch.float64).clone())

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor) -> FeatureDistance:
        """Class means and the shared, shrunk covariance of labelled feature vectors.

        Raises
        ------
        ValueError
            If there are no features or the labels do not match them.
        """
        if features.dim() != 2 or features.shape[0] < 2:
            raise ValueError(f"need at least two feature vectors, got {tuple(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"{labels.shape[0]} labels for {features.shape[0]} feature vectors")
        data = features.detach().to(torch.float64)
        classes = torch.unique(labels)
        means = torch.stack([data[labels == label].mean(0) for label in classes])
        centred = torch.cat(
            [data[labels == label] - mean for label, mean in zip(classes, means, strict=True)]
        )
        covariance = centred.T @ centred / centred.shape[0]
        ridge = SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-12)
        covariance = (1 - SHRINKAGE) * covariance + ridge * torch.eye(data.shape[1]).to(data)
        return cls(means, torch.linalg.inv(covariance))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) distance of each (N, D) feature vector to its nearest class mean."""
        if features.dim() != 2 or features.shape[1] != self.means.shape[1]:
            raise ValueError(
                f"features shape {tuple(features.shape)} is not (N, {self.means.shape[1]})"
            )
        offsets = features.to(self.means)[:, None, :] - self.means[None]
        distances = torch.einsum("ncd,de,nce->nc", offsets, self.precision, offsets)
        return distances.min(dim=1).values
